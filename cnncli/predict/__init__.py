"""Batch inference, the job behind ``cnncli predict``: predictions from an engine over input items
(:mod:`.run`), the decoder pool (:mod:`.decode`) and engine replicas (:mod:`.replicas`) that keep the cores busy,
the output writers (:mod:`.writers`), the per-class tally (:mod:`.summary`) and the one job that ties them
together for local predict and for scale's non-parquet outputs (:mod:`.job`).

May import: cnncli.engines and every room below it."""
