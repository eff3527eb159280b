#!/usr/bin/env python3
"""The peer baseline for steward-engine's benchmark: a Hugging Face model
directory served by `transformers` `generate` behind a minimal
OpenAI-compatible `/v1/completions` (JSON or SSE streaming).

Batching is static, as a simple server does it: one worker thread takes the
first waiting request, collects whatever else is waiting (up to
--max-batch, waiting at most --batch-wait-ms for more), left-pads the
prompts into one batch and runs one `generate` call for all of them with
`max_new_tokens` = the largest request's. Each request's stream ends at its
own `max_tokens` (or its EOS), but the batch only ends when its longest
member does; requests arriving meanwhile wait for the next batch.

Supported request fields: prompt (string, or a list of token ids), max_tokens, temperature
(0 = greedy; a batch samples with its first request's temperature), stream,
stream_options.include_usage, ignore_eos (vLLM's extension: no stop before
max_tokens). Also GET /health, GET /v1/models.

    $STEWARD_PYTHON bench/hf_server.py --model DIR --port 8100 [--threads 2] [--device cuda] [--dtype bfloat16]
"""
import argparse
import json
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

_DONE = object()


class Job:
    """One admitted request and the queue its tokens go to."""

    def __init__(self, prompt_ids, max_tokens, temperature, ignore_eos):
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.ignore_eos = ignore_eos
        self.out = queue.Queue()  # token ids, then (_DONE, finish_reason) or an Exception


class BatchStreamer(BaseStreamer):
    """Routes each generated column of a batch to its requests' queues."""

    def __init__(self, jobs, eos_ids):
        self.jobs = jobs
        self.eos_ids = eos_ids
        self.counts = [0] * len(jobs)
        self.closed = [False] * len(jobs)
        self.seen_prompt = False

    def put(self, value):
        if not self.seen_prompt:  # generate() first hands over the prompt ids
            self.seen_prompt = True
            return
        col = value.view(-1).tolist()
        for i, tok in enumerate(col):
            if self.closed[i]:
                continue
            job = self.jobs[i]
            if not job.ignore_eos and tok in self.eos_ids:
                self._close(i, "stop")
                continue
            job.out.put(tok)
            self.counts[i] += 1
            if self.counts[i] >= job.max_tokens:
                self._close(i, "length")

    def _close(self, i, reason):
        self.closed[i] = True
        self.jobs[i].out.put((_DONE, reason))

    def end(self):
        for i in range(len(self.jobs)):
            if not self.closed[i]:
                self._close(i, "length")


class Batcher(threading.Thread):
    """The single generation thread: static batches, one generate() each."""

    def __init__(self, model, tok, max_batch, wait_s):
        super().__init__(daemon=True)
        self.model = model
        self.tok = tok
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.q = queue.Queue()
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.batches = 0

    def run(self):
        while True:
            jobs = [self.q.get()]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    jobs.append(self.q.get(timeout=max(left, 0)) if left > 0 else self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                self.generate(jobs)
            except Exception as e:  # a failed batch fails its requests, not the server
                for j in jobs:
                    j.out.put(e)

    def generate(self, jobs):
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, j in enumerate(jobs):  # left padding, as decoder-only batching needs
            n = len(j.prompt_ids)
            ids[i, width - n:] = torch.tensor(j.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        longest = max(j.max_tokens for j in jobs)
        temp = jobs[0].temperature
        kwargs = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=longest,
            pad_token_id=self.pad_id,
            streamer=BatchStreamer(jobs, self.eos_ids),
        )
        if all(j.ignore_eos for j in jobs):
            kwargs["min_new_tokens"] = longest
        if temp and temp > 0:
            kwargs.update(do_sample=True, temperature=float(temp), top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        self.batches += 1
        with torch.inference_mode():
            self.model.generate(**kwargs)


def make_handler(state):
    tok, batcher, model_name = state["tok"], state["batcher"], state["model_name"]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the load generator does the counting
            pass

        def _json(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code, msg, typ="invalid_request_error"):
            self._json(code, {"error": {"message": msg, "type": typ}})

        def do_GET(self):
            if self.path in ("/health", "/ready"):
                self._json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model_name, "object": "model"}]})
            else:
                self._error(404, "not found")

        def do_POST(self):
            if self.path != "/v1/completions":
                return self._error(404, "only /v1/completions is served")
            try:
                n = int(self.headers.get("content-length", "0"))
                req = json.loads(self.rfile.read(n) or b"{}")
                prompt = req["prompt"]
                if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                    ids = list(prompt)  # token ids, as the engine accepts them
                elif isinstance(prompt, str):
                    ids = None
                else:
                    raise ValueError("prompt must be a string or a list of token ids")
                max_tokens = int(req.get("max_tokens", 16))
                if max_tokens < 1:
                    raise ValueError("max_tokens must be >= 1")
            except (ValueError, KeyError, TypeError) as e:
                return self._error(400, f"bad request: {e}")
            if ids is None:
                ids = tok(prompt, add_special_tokens=True)["input_ids"]
            job = Job(ids, max_tokens, float(req.get("temperature") or 0.0), bool(req.get("ignore_eos", False)))
            batcher.q.put(job)
            rid = "cmpl-" + uuid.uuid4().hex[:16]
            stream = bool(req.get("stream", False))
            usage_wanted = bool((req.get("stream_options") or {}).get("include_usage", False))
            if stream:
                self._stream(job, rid, len(ids), usage_wanted)
            else:
                self._whole(job, rid, len(ids))

        def _tokens(self, job):
            """Yields (text_delta, finish_reason|None) with incremental detokenisation."""
            out_ids, emitted = [], ""
            while True:
                item = job.out.get()
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, tuple) and item[0] is _DONE:
                    yield "", item[1], len(out_ids)
                    return
                out_ids.append(item)
                text = tok.decode(out_ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
                    delta = ""
                else:
                    delta, emitted = text[len(emitted):], text
                yield delta, None, len(out_ids)

        def _chunk(self, data):
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

        def _stream(self, job, rid, prompt_len, usage_wanted):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            created = int(time.time())
            base = {"id": rid, "object": "text_completion", "created": created, "model": model_name}
            try:
                for delta, finish, count in self._tokens(job):
                    if finish is None:
                        # One event per token; its text may be empty while an
                        # incomplete UTF-8 sequence is held back.
                        ch = dict(base, choices=[{"index": 0, "text": delta, "logprobs": None, "finish_reason": None}])
                        self._chunk(json.dumps(ch))
                        continue
                    ch = dict(base, choices=[{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}])
                    self._chunk(json.dumps(ch))
                    if usage_wanted:
                        usage = {"prompt_tokens": prompt_len, "completion_tokens": count,
                                 "total_tokens": prompt_len + count}
                        self._chunk(json.dumps(dict(base, choices=[], usage=usage)))
                self._chunk("[DONE]")
            except Exception as e:
                self._chunk(json.dumps({"error": {"message": str(e), "type": "server_error"}}))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _whole(self, job, rid, prompt_len):
            text, finish, count = "", "length", 0
            try:
                for delta, fin, count in self._tokens(job):
                    text += delta
                    if fin:
                        finish = fin
            except Exception as e:
                return self._error(500, str(e), "server_error")
            self._json(200, {
                "id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_len, "completion_tokens": count, "total_tokens": prompt_len + count},
            })

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--served-model-name", default="bench")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--max-batch", type=int, default=16, help="most requests in one generate() call")
    ap.add_argument("--batch-wait-ms", type=float, default=20.0,
                    help="after the first request, wait this long for more to fill the batch")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute dtype")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device)
    model.eval()
    with torch.inference_mode():  # warm-up: the first generate() pays one-off costs
        model.generate(input_ids=torch.tensor([[0, 5, 6, 7]], device=args.device), max_new_tokens=2, do_sample=False,
                       pad_token_id=0, temperature=None, top_p=None, top_k=None)
    batcher = Batcher(model, tok, args.max_batch, args.batch_wait_ms / 1000.0)
    batcher.start()
    state = {"tok": tok, "batcher": batcher, "model_name": args.served_model_name}
    server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    server.daemon_threads = True
    print(f"hf_server: ready on http://{args.host}:{args.port} in {time.monotonic() - t0:.1f}s "
          f"(torch {torch.__version__}, {args.device}, {args.dtype}, {torch.get_num_threads()} threads, "
          f"attn {model.config._attn_implementation})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
