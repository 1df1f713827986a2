"""Does an exponential moving average of the emulator weights help? One rate's chain of a
profile, its emulators trained without EMA and with each decay, the rest shared.

    python sweeps/ema_ablation.py [--profile demo] [--latent-channels 16] [--decays 0.99 0.999]

The autoencoder and its latent caches are trained once (reused from the store when there);
each decay trains the diffusion emulator and the neural solver again from the same seed
with :attr:`~lolaray.trainers.loop.LoopConfig.ema_decay` set, and evaluates them like the
study does. Printed: VRMSE by horizon (averaged over contexts) and the diffusion
ensemble's spread-skill ratio, per decay — the figures that decide the profile's default.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys

from lolaray.platform.data import open_dataset
from lolaray.platform.dataset_specs import resolve_spec
from lolaray.platform.session import start_ray
from lolaray.platform.stages import StageContext, add_stage_arguments
from lolaray.platform.tracking import create_run
from lolaray.sweeps.chain import PROFILES, run_latent_chain


def _overall(artifact, metric: str) -> dict[str, float]:
    """``horizon → metric`` over all contexts, absolute reference, from ``metrics.csv``."""
    text = (artifact.path / "metrics.csv").read_text()
    rows = [
        r for r in csv.DictReader(io.StringIO(text)) if r["context"] == "all" and r["reference"] == "absolute"
    ]
    return {r["horizon"].removeprefix("lead_"): float(r[metric]) for r in rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--latent-channels", type=int, default=16)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.99, 0.999])
    add_stage_arguments(parser, dataset_default=None, scaling="workers")
    args = parser.parse_args(argv)

    start_ray(args.address)
    base = PROFILES[args.profile]
    info = open_dataset(args.dataset or base.dataset, data_root=args.data_root)
    spec = resolve_spec(info)
    base = base.for_dataset(spec)
    context = StageContext.from_args(args)
    parent = create_run(
        context.experiment,
        run_name=f"ema-ablation-{args.profile}",
        uri=context.tracking_uri,
        tags={"stage": "ablation"},
        params={"latent_channels": args.latent_channels, "decays": args.decays},
    )
    context = context.replace(parent_run_id=parent)
    scoring = spec.scoring()
    results = {}
    for decay in [None, *args.decays]:
        emulator = dataclasses.replace(
            base.emulator, loop=dataclasses.replace(base.emulator.loop, ema_decay=decay)
        )
        profile = dataclasses.replace(base, emulator=emulator)
        name = "off" if decay is None else f"{decay:g}"
        print(f"[lolaray] EMA {name}: chain at {args.latent_channels} latent channels")
        chain = run_latent_chain(profile, info, args.latent_channels, context, scoring=scoring)
        results[name] = {
            "diffusion": _overall(chain.artifacts["evaluation/diffusion"], "vrmse"),
            "solver": _overall(chain.artifacts["evaluation/solver"], "vrmse"),
            "spread_skill": _overall(chain.artifacts["evaluation/diffusion"], "spread_skill"),
        }
    horizons = list(next(iter(results.values()))["diffusion"])
    header = f"{'EMA decay':<10}" + "".join(
        f"{what + ' ' + h:>22}" for what in ("diffusion", "solver", "spread-skill") for h in horizons
    )
    print(
        f"\nVRMSE by lead-time horizon (physical units, all contexts) and spread-skill, at {args.latent_channels} latent channels"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        cells = [r["diffusion"][h] for h in horizons] + [r["solver"][h] for h in horizons]
        cells += [r["spread_skill"][h] for h in horizons]
        print(f"{name:<10}" + "".join(f"{v:>22.3f}" for v in cells))
    print(f"\nMLflow: parent run {parent} in experiment '{context.experiment}' at {context.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
