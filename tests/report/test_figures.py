"""The shared figure helpers: figures are drawn when matplotlib's configuration folder is unusable."""

import os
import subprocess
import sys


def test_figures_are_drawn_when_the_matplotlib_config_folder_is_unusable(tmp_path):
    not_a_folder = tmp_path / "home"
    not_a_folder.write_text("a file where HOME should be a folder")
    out = tmp_path / "bar.png"
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env["HOME"] = str(not_a_folder)
    code = (
        "import sys; from emdenoise.evaluation import report; report.psnr_bar_chart(sys.argv[1], "
        "{'n_images': 2, 'data_range': 1.0, 'methods': "
        "{'noisy': {'kind': 'input', 'psnr_mean': 10.0, 'psnr_std': 1.0}, "
        "'tv': {'kind': 'classical', 'psnr_mean': 20.0, 'psnr_std': 2.0}}})"
    )
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "Matplotlib" not in res.stderr and "writable" not in res.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
