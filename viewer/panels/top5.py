"""The top-5 classes of one compared model at the current point."""

from __future__ import annotations

from perturber.viewer import html
from perturber.viewer.state import CubeState

__all__ = ["Top5Panel"]


class Top5Panel(html.HTMLPanel):
    """The left (``which='model_a'``) or right (``'model_b'``) model's top-5, as probabilities or logits."""

    width = 300

    def __init__(self, state: CubeState, which: str):
        self.which = which
        super().__init__(state)

    def html(self) -> str:
        state = self.state
        model = getattr(state, self.which)
        rows = state.top5(model)
        if rows is None:
            table = f"<p class='pt-missing'>{state.missing()}</p>"
        else:
            score = (lambda p, l: f"{p:.3f}") if state.score == "probability" else (lambda p, l: f"{l:.2f}")
            items = "".join(f"<tr><td>{i}</td><td>{name}</td><td class='pt-score'>{score(p, l)}</td></tr>"
                            for i, (name, p, l) in enumerate(rows, 1))
            table = f"<table class='pt-top5'><tr><th>#</th><th>class</th><th>{state.score}</th></tr>{items}</table>"
        return f"<div class='pt-model pt-{self.which}'><b>{model}</b>{table}</div>"
