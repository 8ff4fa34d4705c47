"""Batch inference, the job behind ``cnncli predict``: predictions from an engine over input items
(:mod:`.run`), the decoder pool (:mod:`.decode`) and engine replicas (:mod:`.replicas`) that keep the cores busy,
the output writers (:mod:`.writers`) and the per-class tally (:mod:`.summary`).

May import: cnncli.engines and every room below it."""
