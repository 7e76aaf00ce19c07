"""Reference `parameters` PNG text (AUTOMATIC1111's infotext) for runtime/src/infotext.rs, and how
AUTOMATIC1111 and sd-parsers read it back.

For each case below (the generation settings idpatch records), this script
1. writes the text the way AUTOMATIC1111's `create_infotext` (modules/processing.py) lays it out:
   the prompt, "\nNegative prompt: ..." when there is one, then "\n" and the `key: value` pairs
   joined by ", ", each value through `quote` (modules/infotext_utils.py: json.dumps(value,
   ensure_ascii=False) when it holds ',', ':' or '\n'), the whole stripped. Numbers are written
   in their shortest round-trip form without a trailing ".0" (idpatch's choice: "CFG scale: 7");
2. parses it with AUTOMATIC1111's `parse_generation_parameters` as its source reads (prompt lines,
   the "Negative prompt:" line, the parameter regex on the last line when it holds at least three
   pairs, `unquote`, "Size" split into "Size-1"/"Size-2"), restated here since the web UI is not a
   package;
3. embeds it as a tEXt "parameters" chunk in a PNG (Pillow) and reads it with sd-parsers 0.6
   (PyPI), a library image browsers use, recording what it finds.

Run once by hand, in a virtual environment with `pip install sd-parsers==0.6` (it brings Pillow):
    python tests/reference/a1111.py
Writes tests/data/a1111/reference.json.
"""

import io
import json
import pathlib
import re

import sd_parsers
from PIL import Image, PngImagePlugin
from sd_parsers import ParserManager

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "a1111" / "reference.json"
VERSION = "idpatch 0.1.0"
SAMPLERS = {"euler": "Euler", "euler-a": "Euler a", "ddim": "DDIM", "dpmpp-2m": "DPM++ 2M"}
DIGEST = "dc48cb220a1f1db7613baf8e8437396d1d59e15c242246f1ffc693d40752e23d"

CASES = [
    dict(prompt="three friends in a park", negative_prompt="", steps=50, scheduler="euler", karras=False,
         guidance=5.5, seed=0, width=896, height=1152, model_set_digest=DIGEST, model="tiny",
         controlnet_scale=0.8, control_guidance_start=0.0, control_guidance_end=1.0,
         id_injection_ratio=0.8, people=3, backend="tract"),
    dict(prompt="two people on a beach, golden hour", negative_prompt="blurry, low quality", steps=30,
         scheduler="dpmpp-2m", karras=True, guidance=7.0, seed=18446744073709551615, width=1024, height=1024,
         model_set_digest="0123456789abcdef" * 4, model="full-fp16", controlnet_scale=1.0,
         control_guidance_start=0.3, control_guidance_end=0.8, id_injection_ratio=0.5, people=2,
         backend="ort-cuda"),
    dict(prompt="a portrait\nsecond line of the prompt", negative_prompt="text: watermark", steps=1,
         scheduler="euler-a", karras=False, guidance=1.0, seed=42, width=64, height=96,
         model_set_digest="f" * 64, model="set, with comma", controlnet_scale=0.0,
         control_guidance_start=0.0, control_guidance_end=0.25, id_injection_ratio=1.0, people=8,
         backend="ort-cpu"),
    dict(prompt="", negative_prompt="", steps=1000, scheduler="ddim", karras=False, guidance=12.25, seed=7,
         width=8192, height=32, model_set_digest="a" * 64, model="tiny", controlnet_scale=10.0,
         control_guidance_start=0.125, control_guidance_end=0.875, id_injection_ratio=0.0, people=1,
         backend="ort-tensorrt"),
    dict(prompt="caf\u00e9 \u2603 \u5bcc\u58eb\u5c71", negative_prompt="", steps=20, scheduler="euler", karras=True,
         guidance=0.0, seed=123456789, width=512, height=768, model_set_digest=DIGEST, model="tiny",
         controlnet_scale=0.35, control_guidance_start=0.0, control_guidance_end=1.0,
         id_injection_ratio=0.8, people=4, backend="tract"),
]


def number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(text: str) -> str:
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def pairs(case: dict) -> list:
    out = [("Steps", number(case["steps"])), ("Sampler", SAMPLERS[case["scheduler"]])]
    if case["karras"]:
        out.append(("Schedule type", "Karras"))
    out += [
        ("CFG scale", number(case["guidance"])),
        ("Seed", number(case["seed"])),
        ("Size", f"{case['width']}x{case['height']}"),
        ("Model hash", case["model_set_digest"][:10]),
        ("Model", case["model"]),
        ("ControlNet scale", number(case["controlnet_scale"])),
        ("Control guidance start", number(case["control_guidance_start"])),
        ("Control guidance end", number(case["control_guidance_end"])),
        ("ID injection ratio", number(case["id_injection_ratio"])),
        ("People", number(case["people"])),
        ("Backend", case["backend"]),
        ("Version", VERSION),
    ]
    return out


def create_infotext(case: dict) -> str:
    params = ", ".join(f"{k}: {quote(v)}" for k, v in pairs(case))
    negative = f"\nNegative prompt: {case['negative_prompt']}" if case["negative_prompt"] else ""
    return f"{case['prompt']}{negative}\n{params}".strip()


RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_generation_parameters(x: str) -> dict:
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


def sd_parsers_read(text: str) -> dict:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    buffer.seek(0)
    result = ParserManager().parse(Image.open(buffer))
    sampler = result.samplers[0]
    return {
        "generator": result.generator.name,
        "prompt": " ".join(p.value for p in sampler.prompts),
        "negative_prompt": " ".join(p.value for p in sampler.negative_prompts),
        "sampler": sampler.name,
        "parameters": {k: str(v) for k, v in sampler.parameters.items()},
        "model_hash": sampler.model.hash if sampler.model else None,
        "metadata": {k: str(v) for k, v in result.metadata.items()},
    }


def main():
    entries = []
    for case in CASES:
        text = create_infotext(case)
        entries.append({
            "input": case,
            "parameters": text,
            "a1111": parse_generation_parameters(text),
            "sd_parsers": sd_parsers_read(text),
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sd_parsers": sd_parsers.__version__ if hasattr(sd_parsers, "__version__") else "0.6",
                               "cases": entries}, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(entries)} cases written to {OUT}")


if __name__ == "__main__":
    main()
