"""Form widgets generated from option schemas (:class:`attnlens.options.OptionSchema`).

Every method, probe and generation option gets a widget from its declaration, as the command line
gets a flag: an attention-layer index a slider over the chosen model's layers, a list of layers a
multi-select, a boolean a checkbox, a closed set a drop-down, a number a number field with its
bounds, a list of numbers a comma-separated text field. :meth:`OptionForm.given` turns the widgets'
values back into the options the visitor changed (a widget left at its default gives nothing, so
the run's recorded options equal the command line's); the schema validates them in the
application layer, with the same one-line messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr

from attnlens.errors import InputError
from attnlens.options import Option, OptionSchema


def resolved_layer(index: int | None, layers: int) -> int:
    """A layer index (negative counts from the end; ``None``: the last) as ``0 .. layers-1``."""
    if index is None:
        return layers - 1
    return min(max(index % layers if index < 0 else index, 0), layers - 1)


def option_widget(option: Option, layers: int, prefix: str) -> gr.components.Component:
    """The widget of ``option`` for a model with ``layers`` attention layers (in the open gradio
    context), with the element id ``<prefix>-<option name>``."""
    label, info, elem_id = option.name, option.help, f"{prefix}-{option.name}"
    if option.layer and option.multiple:
        return gr.Dropdown(
            list(range(layers)), value=[], multiselect=True, label=label, info=f"{info} (layer indices)", elem_id=elem_id,
        )
    if option.layer:
        return gr.Slider(
            0, max(layers - 1, 0), step=1, value=resolved_layer(option.default, layers), label=label, info=info, elem_id=elem_id,
        )
    if option.type is bool:
        return gr.Checkbox(value=bool(option.default), label=label, info=info, elem_id=elem_id)
    if option.choices is not None:
        return gr.Dropdown(list(option.choices), value=option.default, label=label, info=info, elem_id=elem_id)
    if option.multiple:
        text = "" if option.default is None else ",".join(f"{value:g}" if isinstance(value, float) else str(value)
                                                          for value in option.default)
        return gr.Textbox(value=text, label=label, info=f"{info} (comma-separated)", elem_id=elem_id)
    if option.type in (int, float) and option.default is not None:
        return gr.Number(
            value=option.default, label=label, info=info, minimum=option.minimum, maximum=option.maximum,
            precision=0 if option.type is int else None, elem_id=elem_id,
        )
    return gr.Textbox(value=option.default or "", label=label, info=info, placeholder="not set", elem_id=elem_id)


def _number(option: Option, value: float) -> int | float:
    if option.type is float:
        return float(value)
    if float(value) != int(value):
        raise InputError(f"option {option.name} must be an integer, got {value!r}")
    return int(value)


def widget_value(option: Option, value: Any) -> Any:
    """The option value a widget holds, converted to the option's type (``None``: left empty).
    Text fields (lists, numbers without a default, free text) are parsed as the command line
    parses ``NAME=VALUE``."""
    if value is None or value == "" or (isinstance(value, list) and not value):
        return None
    if option.layer and option.multiple:
        return tuple(int(item) for item in value)
    if isinstance(value, str):
        return option.parse(value) if value.strip() else None
    if option.type in (int, float) and not isinstance(value, bool):
        return _number(option, value)
    return value


def _is_default(option: Option, value: Any, layers: int) -> bool:
    if option.layer and not option.multiple and isinstance(value, int):
        return value == resolved_layer(option.default, layers)
    return value == option.default


class OptionForm:
    """The widgets of one schema, built in the open gradio context.

    Args:
        schema: the options.
        layers: attention layers of the model the form starts with (layer widgets follow the
            chosen model through :meth:`for_model`).
        prefix: the widgets' element ids are ``<prefix>-<option name>``.
    """

    def __init__(self, schema: OptionSchema, layers: int, prefix: str) -> None:
        self.schema = schema
        self.options = list(schema)
        self.widgets = [option_widget(option, layers, prefix) for option in self.options]

    def given(self, values: Sequence[Any], layers: int) -> dict[str, Any]:
        """The options the visitor changed from their defaults, typed (not yet validated against
        the schema's bounds: the application layer does that)."""
        given = {}
        for option, raw in zip(self.options, values):
            value = widget_value(option, raw)
            if value is not None and not _is_default(option, value, layers):
                given[option.name] = value
        return given

    def for_model(self, layers: int) -> list[Any]:
        """Updates of the widgets for a model with ``layers`` attention layers (layer widgets get
        the new range and their default; the others stay)."""
        updates = []
        for option in self.options:
            if option.layer and option.multiple:
                updates.append(gr.update(choices=list(range(layers)), value=[]))
            elif option.layer:
                updates.append(gr.update(maximum=max(layers - 1, 0), value=resolved_layer(option.default, layers)))
            else:
                updates.append(gr.update())
        return updates


class FormSet:
    """One :class:`OptionForm` per owner (method, probe), each in a group shown only while its
    owner is chosen.

    Args:
        schemas: owner name -> schema.
        chosen: the owner shown first.
        layers: as for :class:`OptionForm`.
        prefix: the widgets' element ids are ``<prefix>-<owner>-<option name>``.
    """

    def __init__(self, schemas: Mapping[str, OptionSchema], chosen: str, layers: int, prefix: str) -> None:
        self.groups: dict[str, gr.Group] = {}
        self.forms: dict[str, OptionForm] = {}
        for owner, schema in schemas.items():
            with gr.Group(visible=owner == chosen) as group:
                self.forms[owner] = OptionForm(schema, layers, f"{prefix}-{owner}")
            self.groups[owner] = group

    @property
    def widgets(self) -> list[gr.components.Component]:
        """Every form's widgets, owner by owner (the order :meth:`given` reads them in)."""
        return [widget for form in self.forms.values() for widget in form.widgets]

    def given(self, owner: str, values: Sequence[Any], layers: int) -> dict[str, Any]:
        """The changed options of ``owner``'s form, out of all forms' ``values``."""
        start = 0
        for name, form in self.forms.items():
            stop = start + len(form.widgets)
            if name == owner:
                return form.given(values[start:stop], layers)
            start = stop
        return {}

    def show(self, owner: str) -> list[Any]:
        """Visibility updates of the groups: only ``owner``'s form shows."""
        return [gr.update(visible=name == owner) for name in self.groups]

    def for_model(self, layers: int) -> list[Any]:
        """:meth:`OptionForm.for_model` of every form, in widget order."""
        return [update for form in self.forms.values() for update in form.for_model(layers)]
