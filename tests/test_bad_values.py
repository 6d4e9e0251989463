"""Every bad value is refused by name: zero, negative, non-finite and out-of-range numbers, bogus devices,
non-UTF-8 and binary text (issue 13, item 6; the reliability probe's list, parametrised)."""

import numpy as np
import pytest

from saescope.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    np.save(root / "acts.npy", np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32))
    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e.\n\nAnother paragraph.".encode("latin-1"))
    (root / "binary.txt").write_bytes(b"text at first\n" + bytes(range(256)) * 4)
    (root / "fine.txt").write_text("Plain text.\n\nMore text.")
    return root


CLI_PROBES = [
    ("train --arch topk --width 16 --target-l0 2 --tokens 0 --batch-size 64 --data {root}/acts.npy --out {root}/o1", "tokens: must be a positive integer, got 0"),
    ("train --arch topk --width 16 --target-l0 2 --tokens 512 --batch-size 0 --data {root}/acts.npy --out {root}/o2", "batch_size: must be a positive integer, got 0"),
    ("train --arch topk --width 16 --target-l0 2 --tokens 512 --batch-size -5 --data {root}/acts.npy --out {root}/o3", "batch_size: must be a positive integer, got -5"),
    ("train --arch topk --width 16 --target-l0 2 --tokens 512 --batch-size 64 --data {root}/acts.npy --device tpu --out {root}/o4", "--device tpu: not a device"),
    ("train --arch topk --width 16 --target-l0 2 --tokens 512 --batch-size 64 --data {root}/acts.npy --device cuda:0 --out {root}/o5", "--device cuda:0: CUDA is not available"),
    ("eval {root}/sae --data {root}/acts.npy --batch-size 0", "argument --batch-size: must be at least 1, got 0"),
    ("steer --sae {root}/sae --feature 1 --value nan --prompt hi", "argument --value: must be a finite number, got nan"),
    ("steer --sae {root}/sae --feature 1 --value 1 --prompt hi --max-new-tokens 0", "argument --max-new-tokens: must be at least 1, got 0"),
    ("steer --sae {root}/sae --feature 1 --value 1 --prompt hi --temperature -1", "argument --temperature: must be at least 0, got -1"),
    ("view {root} --port 70000", "argument --port: must be at most 65535, got 70000"),
    ("interpret {root} --tokens 0", "argument --tokens: must be at least 1, got 0"),
    ("lineage {root} --cosine 1.5", "argument --cosine: must be at most 1, got 1.5"),
    ("cache --model smollm2-135m --dataset {root}/fine.txt --hookpoints layers.0.resid_post --tokens 0 --out {root}/c1", "argument --tokens: must be at least 1, got 0"),
    ("cache --model smollm2-135m --dataset {root}/fine.txt --hookpoints layers.0.resid_post --tokens 500 --batch-contexts 0 --out {root}/c2",
     "--batch-contexts: must be an integer of at least 1, got 0"),
    ("bench synthetic --steps 0", "argument --steps: must be at least 1, got 0"),
]


@pytest.mark.parametrize("command,message", CLI_PROBES, ids=[c.split(" --out")[0][:60] for c, _m in CLI_PROBES])
def test_cli_refuses_bad_values_by_name(files, command, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command.format(root=files).split())
    printed = str(exit_info.value.code) + capsys.readouterr().err
    assert message in printed, printed


@pytest.mark.parametrize("name,message", [("latin1.txt", r"latin1.txt: not UTF-8 at byte 3 \(line 1\); convert the file to UTF-8"),
                                          ("binary.txt", r"binary.txt: a NUL byte at byte 14 \(line 2\): this looks like a binary file")])
def test_text_that_is_not_utf8_is_refused_with_the_byte_offset(files, name, message):
    from saescope.data.text import iter_documents

    with pytest.raises(ValueError, match=message):
        list(iter_documents(str(files / name)))
    assert list(iter_documents(str(files / "fine.txt"))) == ["Plain text.", "More text."]
