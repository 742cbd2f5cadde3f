"""ONNX Runtime side of bcaudio, grouped by what each part is for. Never imports torch.

package/    a model package on ONNX Runtime (manifest, sessions, LLM cache, device profiles)
generation/ the generation loop, sampling, noise, flow solver, streamed segments, ``VoiceAssistant``
audio/      audio files, microphone and speaker, voice activity detection
live/       a live conversation (endpointing, incremental prefill, barge-in)
profiling/  the latency profiler, its reports and charts
serve/      `bcaudio serve`: many WebSocket clients on one loaded model, the kiosk page
"""
