#!/usr/bin/env python3
"""An exec worker for cellmesh pipelines speaking `jsonl-batch` (see README, Micro-batching).

Each input `{"text": "..."}` is answered with `{"len": <length>, "batchSize": <n>}`;
anything else is refused for that item only. Ordinary `{"input": ...}` lines (batching off)
are answered with `{"output": ...}` then `{"end": true}`.
"""
import json
import sys


def measure(item, batch_size):
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise ValueError("expected {\"text\": \"...\"}")
    return {"len": len(item["text"]), "batchSize": batch_size}


def answer(line):
    message = json.loads(line)
    if "batch" in message:
        items = message["batch"]
        results = []
        for item in items:
            try:
                results.append({"outputs": [measure(item, len(items))]})
            except ValueError as error:
                results.append({"error": str(error)})
        return [{"batch": results}]
    try:
        return [{"output": measure(message["input"], 1)}, {"end": True}]
    except ValueError as error:
        return [{"error": str(error)}]


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        for reply in answer(line):
            sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
