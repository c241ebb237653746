"""`LabFigure`: the matplotlib figure that every plotting function of the package returns.

The figures are built without pyplot (nothing global, nothing shown behind the caller's back),
so in Jupyter they need their own way to display as a cell's last value. IPython asks a
formatter's registered printers first (by the object's class and its bases) and only then the
object's ``_repr_png_``; ``%matplotlib inline`` registers a PNG printer for `Figure`, which this
subclass inherits. So a figure shows exactly once: through that printer when the inline backend
is active, through ``_repr_png_`` otherwise (a fresh kernel, or pyplot imported without the magic).
"""

from __future__ import annotations

from io import BytesIO

from matplotlib.figure import Figure


class LabFigure(Figure):
    """A `matplotlib.figure.Figure` that renders itself as a PNG in Jupyter, as the inline backend does.

    Example:
        >>> fig = lab.plot_grid(result)   # last value of a cell: shown as a picture
        >>> fig.savefig("grid.png")       # or saved like any figure
    """

    def _repr_png_(self) -> bytes | None:
        # As matplotlib-inline's printer (IPython's `print_figure`): nothing for an empty figure,
        # the figure's dpi and facecolor, the bounding box tight around what is drawn.
        if not self.axes and not self.lines and not self.texts and self._suptitle is None:
            return None
        buffer = BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight", facecolor=self.get_facecolor(),
                     edgecolor=self.get_edgecolor())
        return buffer.getvalue()
