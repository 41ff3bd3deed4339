"""Fuzz campaign: 10,000+ malformed inputs against a real agent, the artifact loader and the
inventory loader (the unit suite runs the same properties with a few hundred).

    python bench/fuzz.py [--cases 2500] [--json]

`--cases` is per property (six properties, so 2,500 gives 15,000), and a fifth of it for
the NaN/Inf numerics checks (each a real benchmark) and a fiftieth for batches of silent
and slow uploads (each up to two seconds). The structured
requests may name a model that exists on the agent, so some of them start real worker
processes and fail at load time, as a hostile host would make them do. Prints the
outcome counts per property; any crash, UNKNOWN status or unclear rejection fails the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import AgentProcess  # noqa: E402
from tests.fuzz import (  # noqa: E402
    custom_artifact_mutations,
    double_model_onnx,
    executor_plan_mutations,
    inventory_files,
    nan_and_inf_checks,
    raw_bytes_to_every_rpc,
    silent_and_slow_clients,
    structured_requests,
    token_model_artifact,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2500, help="examples per property")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from torch import nn

    import bimodels
    from bihost.client import AgentClient

    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp) / "store", name="fuzzed", extra=("--upload-idle-timeout", "1"))
        try:
            torch.manual_seed(0)
            model = bimodels.binarize(
                nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(), nn.Flatten(), nn.Linear(8 * 25, 4)
                ),
                "bnn",
                fp_layers=["0", "3"],
            ).eval()
            seed = bimodels.export(model, "custom", torch.randn(1, 3, 5, 5))
            torch.manual_seed(0)  # a binary ResNet: its graph loads fused (conv epilogues, packed bits, stem)
            resnet = bimodels.export(
                bimodels.binarize(bimodels.create_model("resnet20"), "bnn").eval(),
                "custom",
                torch.randn(1, 3, 32, 32),
            )
            tokens = token_model_artifact()  # embedding, attention, layer norm: the Transformer steps
            with AgentClient(agent.address, "fuzzed") as client:
                model_id = client.push(seed, "custom").model_id
                double_id = client.push(double_model_onnx(), "onnx").model_id
            for name, run in (
                ("raw bytes to every RPC", lambda: raw_bytes_to_every_rpc(agent.address, args.cases)),
                (
                    "hostile well-formed requests",
                    lambda: structured_requests(agent.address, args.cases, [model_id]),
                ),
                ("mutated custom artifacts", lambda: custom_artifact_mutations(seed, args.cases)),
                ("mutated fused resnet artifacts", lambda: custom_artifact_mutations(resnet, args.cases)),
                ("mutated executor plans (resnet20)", lambda: executor_plan_mutations(resnet, args.cases)),
                (
                    "mutated executor plans (token model)",
                    lambda: executor_plan_mutations(tokens, args.cases),
                ),
                ("inventory files", lambda: inventory_files(Path(tmp), args.cases)),
                (
                    "NaN and Inf in numerics checks",
                    lambda: nan_and_inf_checks(agent.address, args.cases // 5, double_id),
                ),
                (
                    "silent and slow clients (batches)",
                    lambda: silent_and_slow_clients(agent.address, args.cases // 50, idle_s=1.0),
                ),
            ):
                start = time.monotonic()
                outcomes = run()
                report[name] = {  # the executor's outcomes count the same mutants again
                    "cases": sum(v for k, v in outcomes.items() if not k.startswith("executor:")),
                    "seconds": round(time.monotonic() - start, 1),
                    "outcomes": outcomes,
                }
                if not args.json:
                    print(
                        f"{name}: {report[name]['cases']} cases in {report[name]['seconds']} s: {outcomes}",
                        flush=True,
                    )
            assert agent.proc.poll() is None, "the agent died"
            with AgentClient(agent.address, "fuzzed") as client:
                assert client.health(), "the agent stopped serving"
            leftovers = list((Path(tmp) / "store" / "tmp").iterdir())
            assert not leftovers, leftovers
        finally:
            agent.stop()
    total = sum(r["cases"] for r in report.values())
    if args.json:
        print(json.dumps({"total_cases": total, "properties": report}, indent=2))
    else:
        print(f"total: {total} cases, agent alive and serving, no upload left behind")


if __name__ == "__main__":
    main()
