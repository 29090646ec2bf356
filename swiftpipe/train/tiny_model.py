"""Random-init models built locally (no download), deterministic (same bytes for the same arguments).

- `build_tiny_model`: a tiny Qwen3 with a locally trained ~2k-token byte-level BPE, for tests and the
  CPU demo: ~1.5 MB, accepted by ms-swift (`--model_type qwen3 --template qwen3`) and by vLLM.
- `build_true_size_model` (`swiftpipe tiny-model OUT --size qwen3-0.6b`): the exact architecture of
  Qwen3-0.6B or Qwen2.5-0.5B-Instruct with Qwen's real tokenizer (`qwen_tokenizer`: built from the
  ranks in the dashscope wheel), its chat template, special tokens and generation config; random
  weights (bf16, ~1.2 GB / ~1.0 GB), or none (`weights=False`: tokenizer and configs, ~16 MB, enough
  for token counts and for ms-swift's template encoding).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.task.reference import ADDRESS_SYSTEM_PROMPT

# Qwen3's special tokens, in Qwen3's order, so chat templates and stop tokens behave the same.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]

# Text the tokenizer is trained on: the vocabulary of the address / complaint / NER tasks.
_CORPUS_WORDS = (
    "省 市 区 县 镇 乡 街道 路 号 楼 单元 室 小区 花园 大厦 村 组 栋 层 巷 弄 大道 中路 东路 西路 南路 北路 "
    "北京市 天津市 上海市 重庆市 河北省 山西省 辽宁省 吉林省 黑龙江省 江苏省 浙江省 安徽省 福建省 江西省 "
    "山东省 河南省 湖北省 湖南省 广东省 海南省 四川省 贵州省 云南省 陕西省 甘肃省 青海省 台湾省 "
    "内蒙古自治区 广西壮族自治区 西藏自治区 宁夏回族自治区 新疆维吾尔自治区 "
    "石家庄市 太原市 沈阳市 长春市 哈尔滨市 南京市 杭州市 合肥市 福州市 南昌市 济南市 郑州市 武汉市 长沙市 "
    "广州市 深圳市 海口市 成都市 贵阳市 昆明市 西安市 兰州市 西宁市 拉萨市 银川市 乌鲁木齐市 南宁市 呼和浩特市 "
    "朝阳区 海淀区 和平区 河西区 浦东新区 徐汇区 渝中区 江北区 武侯区 天河区 西湖区 鼓楼区 历下区 "
    "收件人 收件者 接收人 联系人 电话 联系电话 手机号 手机 地址 姓名 邮箱 问题 投诉 "
    "王 李 张 刘 陈 杨 赵 黄 周 吴 徐 孙 胡 朱 高 林 何 郭 马 罗 欧阳 慕容 司马 诸葛 上官 索南扎西 "
    "伟 芳 娜 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀英 霞 平 刚 桂英 "
    + ADDRESS_SYSTEM_PROMPT + " "
    "地名 人名 机构 公司 组织 政府 书名 电影 游戏 职位 景点 address book company game government movie "
    "name organization position scene email question "
)


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    rng = random.Random(seed)
    words = _CORPUS_WORDS.split()
    keys = ["province", "city", "district", "specific_location", "name", "phone"]
    out = []
    for _ in range(lines):
        picked = rng.sample(words, 6)
        digits = "".join(rng.choice("0123456789") for _ in range(11))
        payload = {k: v for k, v in zip(keys, picked[:5] + [digits])}
        sep = rng.choice(["|", ",", ";", ":", "，", "；", "：", " ", "\t"])
        out.append(sep.join(picked) + sep + digits)
        out.append(json.dumps(payload, ensure_ascii=False))
        out.append(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    return out


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write config, weights, tokenizer and chat template to `out_dir` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    from trl.chat_template_utils import qwen3_chat_template

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(seed), trainer=trainer)
    bpe.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.chat_template = qwen3_chat_template
    tokenizer.save_pretrained(out)

    vocab = len(tokenizer)
    endoftext, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>"))
    assert isinstance(endoftext, int) and isinstance(im_end, int)
    config = Qwen3Config(  # type: ignore[call-arg]  # torch_dtype: accepted, missing from the signature
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        eos_token_id=[config.eos_token_id, config.pad_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    ).save_pretrained(out)
    return out


@dataclass(frozen=True)
class TrueSize:
    """A published model's shape: its config.json and generation_config.json as the hub has them."""

    name: str
    hub_id: str
    tokenizer: str  # qwen_tokenizer flavor
    model_type: str  # ms-swift's --model_type for a local copy
    template: str  # ms-swift's --template
    config: dict
    generation: dict
    parameters: int  # with tied embeddings
    # Qwen3-0.6B's files: indent 2 (config) / 4 (generation), sorted keys, no final newline
    # (git-blob identical to the hub's); Qwen2.5's: indent 2, final newline.
    config_indent: tuple[int, int] = (2, 2)
    final_newline: str = "\n"

    def write_configs(self, out: Path) -> None:
        (out / "config.json").write_text(
            json.dumps(self.config, indent=self.config_indent[0], sort_keys=True) + self.final_newline)
        (out / "generation_config.json").write_text(
            json.dumps(self.generation, indent=self.config_indent[1], sort_keys=True) + self.final_newline)


QWEN3_0_6B = TrueSize(
    name="qwen3-0.6b", hub_id="Qwen/Qwen3-0.6B", tokenizer="qwen3", model_type="qwen3", template="qwen3",
    config={
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
        "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960,
        "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    generation={
        "bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
        "temperature": 0.6, "top_k": 20, "top_p": 0.95, "transformers_version": "4.51.0",
    },
    parameters=596_049_920,
    config_indent=(2, 4),
    final_newline="",
)

QWEN2_5_0_5B_INSTRUCT = TrueSize(
    name="qwen2.5-0.5b-instruct", hub_id="Qwen/Qwen2.5-0.5B-Instruct", tokenizer="qwen2.5", model_type="qwen2",
    template="qwen2_5",
    config={
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    generation={
        "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0",
    },
    parameters=494_032_768,
)

TRUE_SIZES = {size.name: size for size in (QWEN3_0_6B, QWEN2_5_0_5B_INSTRUCT)}


def true_size(name: str) -> TrueSize:
    if name not in TRUE_SIZES:
        raise SwiftpipeError(f"unknown --size {name!r}; choose from {', '.join(TRUE_SIZES)}")
    return TRUE_SIZES[name]


def build_true_size_model(out_dir: str | Path, size: str = "qwen3-0.6b", *, weights: bool = True, seed: int = 0,
                          tokenizer_model: Optional[dict] = None) -> Path:
    """Write `size`'s config.json, generation_config.json, Qwen's real tokenizer and (with `weights`)
    random-init bf16 weights to `out_dir`; return it. `tokenizer_model` reuses a
    `qwen_tokenizer.bpe_model()` (building several)."""
    from swiftpipe.train import qwen_tokenizer

    spec = true_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qwen_tokenizer.write_tokenizer(out, spec.tokenizer, model=tokenizer_model)
    if weights:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(seed)
        spec.write_configs(out)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.bfloat16)
        # save_pretrained writes transformers 5's config files: the hub's are written again after it.
        model.save_pretrained(out, safe_serialization=True)
        del model
    spec.write_configs(out)
    return out
