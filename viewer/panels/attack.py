"""PGD as in the original: attack one model at the current point, fade the
perturbation in with α, and see whether the other models are fooled too."""

from __future__ import annotations

from html import escape

import numpy as np
import panel as pn

from perturber.pipeline.analysis import softmax
from perturber.viewer import classes, html, sessions, widgets
from perturber.viewer.state import ALPHAS, AttackState, CubeState

__all__ = ["AttackPanel"]


class AttackPanel:
    """Controls, the attacked input (x + αδ, or δ alone) and the transfer view
    (every model on the blended image) of an :class:`~perturber.viewer.state.AttackState`."""

    def __init__(self, state: CubeState):
        self.state = state
        self.attack = attack = AttackState(state)
        self.progress = pn.indicators.Progress(value=0, max=100, width=200, visible=False)
        step = pn.widgets.Button(label="PGD step (ε/8)", color="primary", css_classes=["pt-pgd-step"])
        run = pn.widgets.Button(label="run N steps", css_classes=["pt-pgd-run"])
        reset = pn.widgets.Button(label="reset δ")
        step.on_click(lambda _e: self._go(1))
        run.on_click(lambda _e: self._go(attack.steps))
        reset.on_click(lambda _e: attack.reset())
        self.target_field = classes.ClassField(attack, "target", "target class", width=250, css_classes=["pt-pgd-target"])
        controls = pn.Row(
            widgets.select(attack, "model", "attacked model", width=170),
            self.target_field,
            widgets.float_input(attack, "eps", "ε", width=90),
            widgets.select(attack, "norm", "norm", width=70),
            widgets.int_input(attack, "steps", "N", width=70, css_classes=["pt-pgd-n"]),
        )
        blend = pn.Row(widgets.grid_slider(attack, "alpha", list(ALPHAS), "α (blend x + αδ)", css_classes=["pt-alpha"]),
                       widgets.checkbox(attack, "delta_only", "show δ alone (amplified)", css_classes=["pt-delta-only"]))
        self.pane = html.pane(self.html(), width=900)
        attack.param.watch(self._update, ["done", "alpha", "delta_only", "status"])
        self.view = pn.Column(controls, pn.Row(step, run, reset, self.progress), blend, self.pane)


    def shared(self) -> list[tuple[AttackState, dict[str, str]]]:
        """The controls a link holds (:func:`perturber.viewer.app.share_panel`): parameter → URL query name."""
        return [(self.attack, {"model": "pgd_model", "target": "pgd_target", "eps": "pgd_eps", "norm": "pgd_norm"})]
    def __panel__(self) -> pn.Column:
        return self.view

    def _go(self, n: int) -> None:
        """``n`` steps: in a thread when served (the event loop serves every other
        session meanwhile; each step's δ comes back to this one), else waited for."""
        deliver = sessions.on_loop()
        self.progress.param.update(visible=True, max=n, value=0)
        if deliver is None:
            self.attack.run(n, progress=lambda i: setattr(self.progress, "value", i))
            self.progress.visible = False
        elif not self.attack.start(n, deliver, progress=lambda i: setattr(self.progress, "value", i),
                                   finished=lambda: setattr(self.progress, "visible", False)):
            self.progress.visible = False

    def _update(self, *_) -> None:
        self.pane.object = self.html()

    def html(self) -> str:
        attack, image = self.attack, self.state.image()
        if attack.delta is None or attack.logits is None or image is None:
            return f"<div class='pt-attack'><p class='pt-attack-status'>{escape(attack.status or 'No perturbation yet: press PGD step.')}</p></div>"
        x = image.astype(np.float32) / 255
        d = attack.delta.transpose(1, 2, 0)
        if attack.delta_only:
            shown = np.clip(0.5 + d / (2 * max(float(np.abs(d).max()), 1e-8)), 0, 1)
        else:
            shown = np.clip(x + attack.alpha * d, 0, 1)
        a = ALPHAS.index(attack.alpha)
        class_names = self.state.analysis.class_names
        rows = []
        for m, model in enumerate(attack.models):
            p = softmax(attack.logits[a, m])
            before = softmax(attack.logits[0, m])
            top, orig = int(p.argmax()), int(before.argmax())
            mark = " (attacked)" if model == attack.model else ""
            rows.append(f"<tr class='pt-transfer-{model}'><td>{model}{mark}</td><td>{class_names[orig]} ({before[orig]:.2f})</td>"
                        f"<td>{class_names[top]} ({p[top]:.2f})</td></tr>")
        table = ("<table class='pt-transfer'><tr><th>model</th><th>α = 0</th><th>α = " + f"{attack.alpha:g}" + "</th></tr>"
                 + "".join(rows) + "</table>")
        caption = "δ alone (amplified)" if attack.delta_only else f"x + {attack.alpha:g} δ"
        return (f"<div class='pt-attack'><p class='pt-attack-status'>{escape(attack.status)}</p><figure class='pt-attack-image'>"
                f"<img class='pt-attacked' src='{html.png((shown * 255).round().astype(np.uint8))}' width='224'>"
                f"<figcaption>{caption}</figcaption></figure>{table}</div>")
