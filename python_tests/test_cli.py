"""The `medmix` command: demo output, info, and one-line errors with a non-zero exit."""
import os
import subprocess
import sys

import pytest
from PIL import Image

from medmix_ops import cli


def test_demo_writes_preview_and_table(tmp_path, capsys):
    rc = cli.main(["demo", "--out", str(tmp_path), "--batch", "4", "--size", "32", "--quick"])
    assert rc == 0
    printed = capsys.readouterr().out
    for backend in ("reference", "cpu", "triton"):
        assert f" {backend}" in printed
    assert "images/s" in printed
    for op in ("gaussian_blend", "saliency spectral_residual", "saliency fine_grained",
               "patch_ratio_pool", "adm_mix"):
        assert op in printed
    with Image.open(tmp_path / "preview.png") as im:
        assert im.size[0] > 5 * 32 and im.size[1] > 4 * 32  # 5 columns x 4 rows of 32 px
    with Image.open(tmp_path / "preview_ops.png") as im:
        assert im.size[0] > 8 * 32 and im.size[1] > 4 * 32  # image, 4 saliency maps, ADM, Otsu, mix
    assert (tmp_path / "preview_policies.png").exists() and "label fidelity" in printed


def test_demo_bad_argument_is_one_line_error(tmp_path, capsys):
    rc = cli.main(["demo", "--out", str(tmp_path), "--batch", "2", "--size", "16", "--sigma", "-1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sigma must be finite and in [0" in err


def test_argparse_rejects_nonpositive_sizes(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--batch", "0"])
    assert e.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_every_option_has_help_with_its_default(capsys):
    """`medmix <command> --help` describes every option and says each default (0 included)."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"medmix {name} {action.option_strings[0]} has no help"
            text = formatter._get_help_string(action) % dict(vars(action), prog=sub.prog)
            if action.default is not None and action.default is not False and not action.required:
                assert "default" in text, f"medmix {name} {action.option_strings[0]}: {text!r}"
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "--seed SEED    seed of the generated images (default: 0)" in capsys.readouterr().out
    # compare sets the policy, resume and stop per run: those options are not offered there
    for option in ("--policy", "--resume", "--stop-after"):
        offered = lambda cmd: {o for a in commands[cmd]._actions for o in a.option_strings}  # noqa: E731
        assert option not in offered("compare") and option in offered("train-classifier")


def test_info_reports_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "extension: loaded" in out and "backends for cpu tensors" in out


def test_console_module_entry_point_runs():
    """`python -m medmix_ops.cli` works in a fresh process, where the CLI itself must set up
    TRITON_INTERPRET before anything imports triton."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "medmix_ops.cli", "info"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "triton" in res.stdout


def test_fidelity_command_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "f.json", tmp_path / "f.png"
    rc = cli.main(["fidelity", "--n", "32", "--size", "32", "--batch", "16", "--json", str(js),
                   "--plot", str(png), "--policies", "mixup", "cutmix"])
    assert rc == 0
    import json

    data = json.loads(js.read_text())
    assert set(data["policies"]) == {"mixup", "cutmix"} and "label_mismatch" in data["policies"]["cutmix"]
    assert png.exists() and "label mismatch" in capsys.readouterr().out


@pytest.mark.parametrize("policy", ["saliencymix", "varimix", "genmix"])
def test_preview_command(tmp_path, policy):
    out = tmp_path / "grid.png"
    assert cli.main(["preview", "--policy", policy, "--n", "3", "--size", "32", "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[0] > 4 * 32


def test_preview_of_a_folder_without_a_generator_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "y.png")
    rc = cli.main(["preview", "--policy", "varimix", "--data", str(tmp_path), "-o", str(tmp_path / "g.png")])
    assert rc == 2 and "varimix needs a translator" in capsys.readouterr().err
