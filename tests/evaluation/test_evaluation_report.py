"""The test report's results.md and log table, drawn with the one table writer, on made-up metrics."""

from emdenoise.evaluation import report as evaluation


def test_results_markdown_ranks_by_psnr_with_the_table_format_of_before(test_metrics):
    text = evaluation.markdown(test_metrics)
    lines = text.splitlines()
    assert "| rank | method | kind | PSNR (dB) | SSIM | MSE | images/s | ms/image | settings |" in lines
    assert "|---:|---|---|---:|---:|---:|---:|---:|---|" in lines
    ranked = [line for line in lines if line.startswith(("| 1 ", "| 2 ", "| 3 "))]
    assert [line.split(" | ")[1] for line in ranked] == ["unet", "gaussian", "noisy"]
    assert ranked[1].endswith("| sigma=1.5; gain 0.9, offset 0.1 |")
    assert ranked[2].endswith("| 10.00 ± 1.00 | 0.500 ± 0.100 | 1.000e-03 | - | 0.00 |  |")
    assert "| method | 5-20 (n=2) | 50-200 (n=2) |" in lines and "| unet | 24.00 | - |" in lines
    assert "R = 2.5 (max - min of the clean test set)" in text and evaluation.BASELINE_NOTE in text


def test_the_log_table_is_aligned(test_metrics):
    lines = evaluation.text_table(test_metrics)
    assert len(lines) == 4 and lines[1].startswith("unet ") and lines[3].startswith("noisy")
    assert len({len(line) for line in lines}) == 1


def test_the_atom_table_has_the_ceiling_and_the_vacancy_precision(test_metrics):
    atoms = {"precision": 0.5, "recall": 0.4, "f1": 0.444, "vacancy_recall": 0.0, "vacancy_precision": None}
    metrics = {
        **test_metrics,
        "has_atoms": True,
        "methods": {name: {**row, "atoms": atoms} for name, row in test_metrics["methods"].items()},
        "truth": {"precision": 0.86, "recall": 0.7, "f1": 0.771, "vacancy_recall": 1.0, "vacancy_precision": 0.5},
    }
    lines = evaluation.markdown(metrics).splitlines()
    header = next(line for line in lines if line.startswith("| method | kind | band PSNR"))
    assert "| atom F1 |" in header and header.endswith("| vacancy R | vacancy P | deviation | flagged |")
    truth = [line for line in lines if line.startswith("| truth (clean image) |")]
    assert truth == ["| truth (clean image) | truth | - | - | 0.860 | 0.700 | 0.771 | - | 1.000 | 0.500 | - | - |"]
