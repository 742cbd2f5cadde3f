"""A Qwen2-style byte-level BPE text tokenizer for random checkpoints, with the special tokens at the config's ids.

The real ``tokenizer.json`` cannot be downloaded, yet every consumer (the runtime,
transformers, the prompt builder) needs one with the real *structure*: Qwen2's
split regex, byte-level alphabet (so any text round-trips), the regular
vocabulary ending exactly at ``<|endoftext|>``, and every id from there up to
``vocab_size - 1`` an added special token. So a small BPE is trained here on an
embedded English and Chinese corpus and laid out like the real one. Its regular
ids spell different text than the real vocabulary's, so a real checkpoint must
keep its own tokenizer.json; only the special-token ids are shared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bcaudio.config import ConfigError, ModelConfig

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2 / Qwen2.5).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Voice-assistant style text in both languages, with the ASR prompt and every clause mark the demo
# loop splits on, so that the merges cover the strings the runtime actually builds.
CORPUS = """\
You are a helpful voice assistant. Hello, this is a test of the voice assistant. What is the weather like today?
The weather is sunny and warm, with a light wind from the west. It will rain tomorrow afternoon, so take an umbrella!
Can you tell me a story? Once upon a time, a little fox lived in a quiet forest near the river.
Every morning the fox walked to the water, looked at the sky, and listened to the birds singing.
One day it met an old turtle. "Where are you going?" asked the fox. "I'm going home," said the turtle.
They became friends, and they talked about the seasons, the stars, and the people who lived in the town.
Please set an alarm for seven o'clock. I've set the alarm. Do you want me to remind you about your meeting?
Yes, please remind me at nine. Sure! I'll remind you at nine o'clock. Is there anything else I can help with?
How do I cook rice? First, wash the rice two or three times. Then add water and cook it for about twenty minutes.
What's the capital of France? The capital of France is Paris. It's famous for its museums, food, and history.
Translate this sentence into Chinese, please. Speak slowly and clearly. Could you repeat that? Thank you very much.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 25 100 2024 3.14 50% 16000 Hz. Time: 09:30, 12:45, 18:00.
The model listens to speech, thinks in text, and answers with both text and speech at the same time.
Good morning! Good night! Really? Of course. That's great, thanks a lot. You're welcome. We'd like to know more.
将语音转录为文本:
你好，我是你的语音助手。今天天气怎么样？今天天气晴朗，气温二十五度，有微风。明天下午会下雨，记得带伞！
请给我讲一个故事。从前，在一条小河旁边的森林里，住着一只小狐狸。每天早上，它都会去河边喝水，看看天空，听听鸟儿唱歌。
有一天，它遇到了一只老乌龟。"你要去哪里？"小狐狸问。"我要回家。"乌龟说。后来它们成了好朋友，一起聊季节、星星和城里的人。
请帮我设一个早上七点的闹钟。好的，闹钟已经设好了。需要我提醒你开会吗？需要，请在九点提醒我。没问题！
米饭怎么做？先把米洗两三遍，然后加水，煮二十分钟左右就可以了。法国的首都是哪里？法国的首都是巴黎，那里有很多博物馆和美食。
请把这句话翻译成英文。请说慢一点，说清楚一点。你能再说一遍吗？非常感谢！不客气。
这个模型可以听懂语音，用文字思考，并且同时用文字和语音回答问题。语音识别、语音合成、语音翻译和语音对话都可以在一个模型里完成。
我们的城市很美丽，春天有花，夏天有雨，秋天有落叶，冬天有雪。你喜欢哪个季节？我最喜欢秋天，因为天气凉快，风景也很漂亮。
数字：一、二、三、四、五、六、七、八、九、十、一百、一千、一万。现在是上午九点半，下午三点，晚上八点。
Mixed: 我们今天学习 Python 和 speech recognition。OK，没问题！Let's go，出发吧？
"""


def _byte_level() -> pre_tokenizers.ByteLevel:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)


def qwen2_pipeline(tok: Tokenizer) -> Tokenizer:
    """Qwen2's normalizer, pre-tokenizer, post-processor and decoder, set on ``tok``."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        _byte_level(),
    ])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def _train(max_vocab: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a BPE trained on ``CORPUS``; the trainer stops early when the corpus runs out of pairs."""
    tok = qwen2_pipeline(Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False)))
    trainer = trainers.BpeTrainer(vocab_size=max_vocab, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def added_tokens(cfg: ModelConfig) -> list[tuple[int, str]]:
    """(id, text) of every id from eos to vocab_size - 1: declared tokens where set, reserved fillers elsewhere."""
    declared = cfg.tokens.by_id()
    return [(i, declared.get(i, f"<|reserved_{i}|>")) for i in range(cfg.tokens.eos, cfg.llm.vocab_size)]


def build_text_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The tokenizer for ``cfg``: same layout and ids as the real one; identical output for identical configs."""
    eos = cfg.tokens.eos
    alphabet = len(pre_tokenizers.ByteLevel.alphabet())
    if eos < alphabet:
        raise ConfigError(f"special_tokens: eos id {eos} leaves no room for the {alphabet} byte-level symbols")
    below = sorted(i for i in cfg.tokens.by_id() if i < eos)
    if below:
        raise ConfigError(f"special_tokens: ids {below} are below eos {eos}; the regular vocabulary must end at eos")
    vocab, merges = _train(eos)
    # Ids between the trained vocabulary and eos get entries no merge produces, so that the added
    # tokens land at their configured ids and the embedding rows keep the real model's meaning.
    for i in range(len(vocab), eos):
        vocab[f"<|bpe_filler_{i}|>"] = i
    assert sorted(vocab.values()) == list(range(eos)), "trained vocabulary ids are not contiguous"
    tok = qwen2_pipeline(Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False)))
    added = added_tokens(cfg)
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False) for _, text in added])
    wrong = [(i, text) for i, text in added if tok.token_to_id(text) != i]
    assert not wrong, f"special tokens off their ids: {wrong[:3]}"
    return tok


def tokenizer_config(cfg: ModelConfig) -> dict[str, Any]:
    """transformers' tokenizer_config.json for Qwen2: what makes ``AutoTokenizer`` pick the fast Qwen2 class."""
    eos_text = cfg.tokens.NAMES["eos"]
    declared = cfg.tokens.by_id()
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": True}
            for i, text in added_tokens(cfg)
        },
        "additional_special_tokens": [declared[i] for i in sorted(declared) if i != cfg.tokens.eos],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_text,
        "errors": "replace",
        "model_max_length": cfg.llm.max_position_embeddings,
        "pad_token": eos_text,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def save_text_tokenizer(cfg: ModelConfig, out_dir: Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json into ``out_dir``; returns the tokenizer.json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TOKENIZER_FILE
    build_text_tokenizer(cfg).save(str(path), pretty=True)
    (out_dir / TOKENIZER_CONFIG_FILE).write_text(
        json.dumps(tokenizer_config(cfg), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
