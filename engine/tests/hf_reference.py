"""Reference outputs from Hugging Face transformers for steward-engine's
correctness test (engine/tests/hf_correctness.rs).

Reads JSON from stdin: {"model_dir": str, "texts": [str], "prompts": [[int]], "steps": int}
Writes JSON to stdout: {"token_ids": [[int]] (the HF tokenizer's encoding of
each text), "logits": [[float]] (next-token logits after each prompt),
"greedy": [[int]] (greedy continuation of `steps` tokens, EOS not special)}.
"""
import json
import sys

import torch
from transformers import AutoTokenizer, LlamaForCausalLM


def main():
    req = json.load(sys.stdin)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(req["model_dir"])
    model = LlamaForCausalLM.from_pretrained(
        req["model_dir"], torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    out = {"token_ids": [], "logits": [], "greedy": []}
    for text in req["texts"]:
        out["token_ids"].append(tok(text, add_special_tokens=True)["input_ids"])
    with torch.no_grad():
        for prompt in req["prompts"]:
            ids = torch.tensor([prompt], dtype=torch.long)
            logits = model(ids).logits[0, -1]
            out["logits"].append(logits.tolist())
            seq = list(prompt)
            for _ in range(req["steps"]):
                nxt = int(model(torch.tensor([seq], dtype=torch.long)).logits[0, -1].argmax())
                seq.append(nxt)
            out["greedy"].append(seq[len(prompt):])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
