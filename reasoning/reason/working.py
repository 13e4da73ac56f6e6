"""Whether a trace's working is right: every equation `a op b (op c ...) = r` it writes holds.

Why: q_φ(z | x, y) is told the answer, and on the default model it often writes wrong steps that land on
it ("14 - 2 = 11 ... = 7"). Such a trace ends at y, so the acc estimator and "reaches the answer" keep it,
and the final π learns wrong arithmetic from it. `check_working` gives those traces ρ = 0
(variational_sft), and, so that the baselines get the same verifier, reward 0 to such a sample of RFT,
GRPO and STaR (`reward`). It is a verifier of arithmetic working (the chain and word_chain traces, GSM8K's
`<<a*b=c>>` annotations), not a general one: a trace without equations is left as it is.
"""

from __future__ import annotations

import ast
import operator
import re

from reasoning.reason.tasks import is_correct

_NUM = r"-?\d+(?:\.\d+)?"
_EQUATION = re.compile(rf"((?:{_NUM}\s*[-+*/×x]\s*)+{_NUM})\s*=\s*({_NUM})")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _value(node: ast.AST) -> float:
    """The value of an arithmetic expression tree of numbers and + - * / (nothing else is evaluated)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    raise ValueError("not arithmetic")


def equations(text: str) -> list[tuple[str, str]]:
    """The (left side, result) of every equation in `text`, e.g. [("13 + 1", "14")]."""
    return _EQUATION.findall(text)


def working_is_right(text: str) -> bool | None:
    """True when every equation of `text` holds, False when one does not, None when it has none."""
    found = equations(text)
    if not found:
        return None
    for left, result in found:
        try:
            value = _value(ast.parse(left.replace("×", "*").replace("x", "*"), mode="eval").body)
        except (ValueError, SyntaxError, ZeroDivisionError):
            return False
        if abs(value - float(result)) > 1e-6:
            return False
    return True


def reward(text: str, answer: str, check_working: bool = False) -> bool:
    """The on-policy objectives' reward: the strict answer is y, and (`check_working`) no equation of the
    working is wrong; r = 1[answer(text) = y] · 1[no wrong equation]."""
    return is_correct(text, answer) and not (check_working and working_is_right(text) is False)
