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
