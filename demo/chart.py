"""The demo's chart: RSS over time, one panel per scenario, one line per configuration."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def draw(panels, path, title):
    """panels: [{"title", "floor" (MiB or None), "lines": [{"label", "color", "style",
    "t", "mib", "end", "done_at", "emphasis"}]}]"""
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        top = 0.0
        for line in panel["lines"]:
            width = 2.6 if line["emphasis"] else 1.6
            ax.plot(line["t"], line["mib"], line["style"], color=line["color"], linewidth=width,
                    label="%s: ends at %.0f MiB" % (line["label"], line["end"]))
            # The end of the work: the idle tail follows it.
            if line["done_at"] is not None and line["t"]:
                i = min(range(len(line["t"])), key=lambda k: abs(line["t"][k] - line["done_at"]))
                ax.plot([line["t"][i]], [line["mib"][i]], "o", color=line["color"], markersize=5)
            top = max([top] + line["mib"])
        if panel["floor"]:
            ax.axhline(panel["floor"], color="#888888", linestyle=":", linewidth=1.5,
                       label="live data at the end (floor): %.0f MiB" % panel["floor"])
        ax.set_title(panel["title"], fontsize=13, loc="left", fontweight="bold")
        ax.set_xlabel("seconds since the process started (dot: work done, then idle)")
        ax.set_ylabel("RSS (MiB)")
        ax.set_ylim(0, top * 1.08 if top else 1)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=15, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
