"""Run the real `cnncli serve` machinery (cnncli.serve.server.serve_engine, what the CLI calls once its engine is
open) on a test engine that misbehaves on purpose, as its own process:

    python tests/serve_engines.py KIND MODEL [--timeout S] [--max-queue N]

KIND wraps the real onnxruntime engine of MODEL; each misbehaves only on bright images (mean pixel > 0.9 after
normalisation, e.g. an all-white PNG), so the warm-up (a black image) and ordinary photos are served normally:

- ``fewer-rows``: answers one row less than the batch has images (for batches of two or more);
- ``crash``: raises a BaseException, which no per-batch handler catches: the batching task itself dies;
- ``slow``: sleeps 2.5 s before answering.
"""

from __future__ import annotations

import argparse
import time


class EngineCrash(BaseException):
    """Not an Exception: what a bug or a foreign library could raise through ``except Exception``."""


class Misbehaving:
    def __init__(self, engine, kind: str) -> None:
        self.engine, self.kind, self.card, self.name = engine, kind, engine.card, f"{engine.name} ({kind})"

    def predict_proba(self, batch):
        probs = self.engine.predict_proba(batch)
        bright = batch.reshape(len(batch), -1).mean(axis=1) > 0.9
        if self.kind == "fewer-rows" and len(batch) > 1:
            return probs[:-1]
        if self.kind == "crash" and bright.any():
            raise EngineCrash("simulated crash inside the engine")
        if self.kind == "slow" and bright.any():
            time.sleep(2.5)
        return probs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["fewer-rows", "crash", "slow"])
    parser.add_argument("model")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-queue", type=int, default=256)
    args = parser.parse_args()

    from cnncli.engines.base import open_engine
    from cnncli.serve.app import ServeSettings
    from cnncli.serve.server import serve_engine

    engine = Misbehaving(open_engine(args.model, device="cpu"), args.kind)
    serve_engine(engine, ServeSettings(timeout=args.timeout, max_queue=args.max_queue, workers=2), "127.0.0.1", 0)


if __name__ == "__main__":
    main()
