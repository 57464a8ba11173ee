"""Widgets bound to a parameter, built directly.

``Widget.from_param`` goes through Panel's ``Param`` machinery (~25 ms a
widget here); a widget made directly and linked both ways costs a tenth of
that, and a page has a few dozen of them, built once per session.
:func:`grid_slider` is one slider over a grid's positions labelled with its
values (Panel's DiscreteSlider is a composite of two widgets and a layout).
"""

from __future__ import annotations

from typing import Any, Callable

import panel as pn
from bokeh.models import CustomJSTickFormatter

__all__ = ["link", "select", "radio", "int_input", "float_input", "checkbox", "grid_slider"]


def link(widget: Any, obj: Any, name: str, to_widget: Callable[[Any], Any] = lambda v: v,
         from_widget: Callable[[Any], Any] = lambda v: v, prop: str = "value") -> Any:
    """Keep ``widget.<prop>`` and ``obj.<name>`` equal (through the two conversions); returns ``widget``."""
    widget.param.watch(lambda e: setattr(obj, name, from_widget(e.new)), prop)
    obj.param.watch(lambda e: setattr(widget, prop, to_widget(e.new)), name)
    return widget


def _label(obj: Any, name: str, label: str | None) -> str:
    return label if label is not None else (obj.param[name].label or name)


def select(obj: Any, name: str, label: str | None = None, **params: Any) -> pn.widgets.Select:
    """A Select over a ``param.Selector``'s objects."""
    return link(pn.widgets.Select(label=_label(obj, name, label), options=list(obj.param[name].objects),
                                  value=getattr(obj, name), **params), obj, name)


def radio(obj: Any, name: str, label: str | None = None, **params: Any) -> pn.widgets.RadioButtonGroup:
    return link(pn.widgets.RadioButtonGroup(label=_label(obj, name, label), options=list(obj.param[name].objects),
                                            value=getattr(obj, name), **params), obj, name)


def int_input(obj: Any, name: str, label: str | None = None, **params: Any) -> pn.widgets.IntInput:
    lo, hi = obj.param[name].bounds or (None, None)
    return link(pn.widgets.IntInput(label=_label(obj, name, label), value=getattr(obj, name), start=lo, end=hi, **params),
                obj, name)


def float_input(obj: Any, name: str, label: str | None = None, **params: Any) -> pn.widgets.FloatInput:
    lo, hi = obj.param[name].bounds or (None, None)
    return link(pn.widgets.FloatInput(label=_label(obj, name, label), value=getattr(obj, name), start=lo, end=hi, **params),
                obj, name)


def checkbox(obj: Any, name: str, label: str | None = None, **params: Any) -> pn.widgets.Checkbox:
    return link(pn.widgets.Checkbox(label=_label(obj, name, label), value=getattr(obj, name), **params), obj, name)


def grid_slider(obj: Any, name: str, values: list[Any], label: str | None = None, **params: Any) -> pn.widgets.IntSlider:
    """A slider over the positions of ``values`` (a grid), showing ``name: value``
    (floats as ``%g``); ``obj.<name>`` is the value itself."""
    labels = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    slider = pn.widgets.IntSlider(label=_label(obj, name, label), start=0, end=max(len(values) - 1, 1),
                                  value=values.index(getattr(obj, name)), disabled=len(values) < 2,
                                  format=CustomJSTickFormatter(args={"labels": labels}, code="return labels[tick]"), **params)
    return link(slider, obj, name, to_widget=values.index, from_widget=lambda i: values[int(i)])
