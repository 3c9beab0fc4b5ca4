"""The PNGs a person would rather look at: throughput against batch size (noisy figures hollow) and the
accuracy the verdict rests on, each titled with the model, the device and the data."""

from ..files import atomic_path


def _figure(panels, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), constrained_layout=True)
    figure.suptitle(title, fontsize=10)
    return plt, figure, axes


def _batch_axis(axis, batches):
    axis.set_xscale("log", base=2)
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.set_xlabel("batch size")
    axis.grid(True, alpha=0.3)


def _save(plt, figure, path):
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def plot_throughput(throughput, path, title="", noisy=None):
    """PNG of fps against batch size (``{backend: {batch: {tower: fps}}}``, integer batches) on a log2 axis: one
    panel per tower, one line per backend, both y axes from 0; noisy figures (``noisy``: {backend: (batch, tower)
    pairs}) drawn hollow and named in the legend."""
    noisy = noisy or {}
    plt, figure, axes = _figure(2, title)
    batches = sorted({b for by_batch in throughput.values() for b in by_batch})
    for axis, tower in zip(axes, ("vision", "text")):
        for backend, by_batch in throughput.items():
            points = sorted(b for b in by_batch if tower in by_batch[b])
            if not points:
                continue
            line, = axis.plot(points, [by_batch[b][tower] for b in points], marker="o", label=backend)
            hollow = [b for b in points if (b, tower) in noisy.get(backend, ())]
            if hollow:
                axis.plot(hollow, [by_batch[b][tower] for b in hollow], linestyle="none", marker="o", markersize=11,
                          markerfacecolor="white", markeredgecolor=line.get_color(), label=f"{backend}: noisy timing")
        _batch_axis(axis, batches)
        axis.set_ylim(bottom=0)
        axis.set_ylabel("samples / s")
        axis.set_title(f"{tower} tower")
        if axis.get_lines():
            axis.legend(fontsize=8)
    return _save(plt, figure, path)


def plot_accuracy(accuracy, path, title="", reference="torch"):
    """PNG of recall@5 (both ways) and the worst cosine to PyTorch per backend against batch size: what the
    verdict rests on, at a glance."""
    plt, figure, axes = _figure(2, title)
    batches = sorted({r["batch_size"] for r in accuracy})
    for backend in dict.fromkeys(r["backend"] for r in accuracy):
        rows = sorted((r for r in accuracy if r["backend"] == backend), key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in rows]
        for key, style in (("image_retrieval_recall@5", "-o"), ("text_retrieval_recall@5", "--s")):
            axes[0].plot(xs, [r["metrics"][key] for r in rows], style, label=f"{backend} {key.split('_')[0]}")
        agreed = [r for r in rows if r.get("agreement")]
        if backend != reference and agreed:
            axes[1].plot([r["batch_size"] for r in agreed],
                         [min(a["min_cosine"] for a in r["agreement"].values()) for r in agreed], "-o", label=backend)
    axes[0].set_ylabel("recall@5")
    axes[0].set_title("recall@5 (image and text retrieval)")
    axes[1].set_ylabel("worst cosine to PyTorch (both towers)")
    axes[1].set_title(f"embeddings against {reference}")
    for axis in axes:
        _batch_axis(axis, batches)
        if axis.get_lines():
            axis.legend(fontsize=7)
    return _save(plt, figure, path)
