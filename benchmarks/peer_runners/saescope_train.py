"""saescope's ``Trainer`` on cached activations, with its defaults for the architecture and target L0.

Run with saescope installed (the repository's environment). Reads the shared ``.npy`` in file order
(``shuffle=False``), the same batches as the peers; the SAE is saved with saescope's checkpoint writer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Clock, arguments, batches, write_result  # noqa: E402


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--option", action="append", default=[], help="NAME=VALUE passed to create_job (repeatable)")
    args = parser.parse_args()
    from saescope.data.activations import IterableSource
    from saescope.io.checkpoint import save_sae
    from saescope.jobs import create_job
    from saescope.training import TrainConfig, Trainer

    options = {}
    for item in args.option:
        name, _, value = item.partition("=")
        options[name] = eval(value, {}, {}) if value not in ("", None) else value  # numbers, booleans, strings in quotes
    torch.manual_seed(0)
    source = IterableSource(lambda: batches(args.data, args.batch, args.steps), name=args.data)
    d_in = source.head(1).shape[1]
    job = create_job(args.arch, d_in, args.width, target_l0=float(args.l0), name=args.arch, **options)
    config = TrainConfig(total_tokens=args.steps * args.batch, batch_size=args.batch, shuffle=False, progress=False, logger="none")
    with Clock() as clock:
        trained = Trainer([job], config).fit(source)
    save_sae(trained[args.arch], Path(args.out, "saescope"))
    import saescope
    write_result(args.out, args, clock.seconds, peer="saescope", peer_version=saescope.__version__, options=options)


if __name__ == "__main__":
    main()
