"""``bcaudio bench``: the speed of the decode loop's graphs against peers, on the same weights, in one run.

LLM decode and prefill for torch eager, optimum-onnx's export of the same weights as a transformers
Qwen2 (fp32 and int4) and bcaudio's own llm graphs (fp32 / int8 / int4); the memory-bandwidth
roofline of a decode step; the audio head per frame and the real-time margin of a whole frame; time
to first audio and RTF of a spoken turn with incremental prefill. See docs/benchmarks.md.
"""
