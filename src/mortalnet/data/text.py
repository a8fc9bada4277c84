"""Character data for the FF sequence experiment (Hinton 2022, sec. 3.5): Aesop's fables as strings
of 100 characters over 30 symbols, and windows "10 previous characters -> next character".

`load_corpus(TextConfig)` reads a text file (or the short built-in excerpt below, which needs no
download), lowercases it, maps ! and ? to '.', ':' to ';' and '-' to a space, drops every other
character outside the 30 symbols a-z, space, comma, semicolon and full stop, collapses runs of
spaces, and cuts it into consecutive strings of 100 characters: the first `train_strings` (248 in
the paper) train; of the strings after them, the first `valid_strings` validate and the rest
(`test_strings`, 0 = all) are the test set, used once at the end.

The built-in text is the opening of Aesop's Fables (translated by G. F. Townsend, 1867; public
domain, Project Gutenberg), normalized as above: 30 strings of 100 characters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mortalnet.config import ConfigError
from mortalnet.data.mnist import DataError

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,;."
"""The paper's 30 symbols."""

BUILTIN_TEXT = (
    "the wolf and the lamb wolf, meeting with a lamb astray from the fold, resolved not to lay "
    "violent hands on him, but to find some plea to justify to the lamb the wolfs right to eat him. "
    "he thus addressed him; sirrah, last year you grossly insulted me. indeed, bleated the lamb in a "
    "mournful tone of voice, i was not then born. then said the wolf, you feed in my pasture. no, "
    "good sir, replied the lamb, i have not yet tasted grass. again said the wolf, you drink of my "
    "well. no, exclaimed the lamb, i never yet drank water, for as yet my mothers milk is both food "
    "and drink to me. upon which the wolf seized him and ate him up, saying, well. i wont remain "
    "supperless, even though you refute every one of my imputations. the tyrant will always find a "
    "pretext for his tyranny. the bat and the weasels a bat who fell upon the ground and was caught "
    "by a weasel pleaded to be spared his life. the weasel refused, saying that he was by nature the "
    "enemy of all birds. the bat assured him that he was not a bird, but a mouse, and thus was set "
    "free. shortly afterwards the bat again fell to the ground and was caught by another weasel, whom"
    " he likewise entreated not to eat him. the weasel said that he had a special hostility to mice. "
    "the bat assured him that he was not a mouse, but a bat, and thus a second time escaped. it is "
    "wise to turn circumstances to good account. the ass and the grasshopper an ass having heard some"
    " grasshoppers chirping, was highly enchanted; and, desiring to possess the same charms of "
    "melody, demanded what sort of food they lived on to give them such beautiful voices. they "
    "replied, the dew. the ass resolved that he would live only upon dew, and in a short time died of"
    " hunger. the lion and the mouse a lion was awakened from sleep by a mouse running over his face."
    " rising up angrily, he caught him and was about to kill him, when the mouse piteously entreated,"
    " saying; if you would only spare my life, i would be sure to repay your kindness. the lion "
    "laughed and let him go. it happened shortly after this that the lion was caught by some hunters,"
    " who bound him by st ropes to the ground. the mouse, recognizing his roar, came gnawed the rope "
    "with his teeth, and set him free, exclaim you ridiculed the idea of my ever being able to help "
    "you, expecting to receive from me any repayment of your favor; i now you know that it is "
    "possible for even a mouse to con benefits on a lion. the charcoal burner and the fuller a "
    "charcoal burner carried on his trade in his own house. one day he met a friend, a fuller, and "
    "entreated him to come and live with him, saying that they should be far better neighbors and "
    "that their housekeeping expenses would be lessened. the fuller replied, the arrangement is "
    "impossible as far as i am concerned, for whatever i should whiten, you would immediately blacken"
    " again with your charcoal. like will draw like. the father and his sons a father had a family of"
    " sons who were perpetually quarreling among themselves. when he failed to heal their disp"
)


class TextError(DataError, ValueError):
    """A corpus that is missing or too short for the requested strings (a DataError: the CLI reports
    it in one line and a run refused by it leaves no run directory)."""


@dataclass(frozen=True)
class TextConfig:
    """Which text, and how it is cut into strings."""

    source: Literal["file", "builtin"] = "file"
    """file: read `path`; builtin: the short excerpt shipped in mortalnet.data.text (no download)."""
    path: str = "../shared/data/aesop.txt"
    """Text file (source file), relative to the working directory; plain text, any characters."""
    string_length: int = 100
    """Characters per string (paper: 100)."""
    train_strings: int = 248
    """Strings used for training (paper: 248)."""
    valid_strings: int = 25
    """Held-out strings right after the training ones, for validation during training."""
    test_strings: int = 0
    """Test strings after the validation ones (0 = all that remain)."""
    context: int = 10
    """Characters of context before the predicted one (paper: 10)."""

    def __post_init__(self) -> None:
        for name in ("string_length", "context"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_strings", "valid_strings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.test_strings < 0:
            raise ConfigError(f"test_strings must be >= 0 (0 = all that remain), got {self.test_strings}")
        if self.string_length <= self.context:
            raise ConfigError(f"string_length ({self.string_length}) must exceed context ({self.context})")


@dataclass(frozen=True)
class Corpus:
    """Training, validation and test strings as symbol indices, (S, L) int64 each."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str
    sha256: str


def normalize(text: str) -> str:
    """Lowercase text over the 30 symbols, single spaces (see the module docstring)."""
    text = text.lower()
    text = re.sub(r"[!?]", ".", text).replace(":", ";").replace("-", " ")
    text = re.sub(r"\s+", " ", text)
    text = "".join(c for c in text if c in ALPHABET)
    return re.sub(r" +", " ", text).strip()


def encode(text: str) -> torch.Tensor:
    """String over ALPHABET -> (L,) int64 symbol indices."""
    bad = sorted({c for c in text if c not in ALPHABET})
    if bad:
        raise TextError(f"characters outside the 30-symbol alphabet: {bad!r}")
    return torch.tensor([ALPHABET.index(c) for c in text], dtype=torch.int64)


def decode(indices) -> str:
    """Symbol indices -> string."""
    return "".join(ALPHABET[int(i)] for i in indices)


def load_corpus(config: TextConfig) -> Corpus:
    """Read, normalize and cut the text into (train, test) strings of `string_length` symbols."""
    if config.source == "builtin":
        raw, origin = BUILTIN_TEXT, "builtin:aesop-excerpt"
    else:
        path = Path(config.path)
        if not path.is_file():
            raise TextError(
                f"text file {path} (resolved: {path.resolve()}) does not exist; set data.path=FILE "
                "or data.source=builtin for the built-in excerpt"
            )
        raw, origin = path.read_text(encoding="utf-8", errors="replace"), str(path)
    text = normalize(raw)
    L = config.string_length
    n = len(text) // L
    held = config.train_strings + config.valid_strings
    if n < held + 1:
        raise TextError(
            f"{origin}: {len(text)} usable characters make {n} strings of {L}; need {config.train_strings} "
            f"for training, {config.valid_strings} to validate and at least 1 to test "
            "(lower data.train_strings or data.valid_strings?)"
        )
    strings = encode(text[: n * L]).reshape(n, L)
    end = n if config.test_strings <= 0 else min(n, held + config.test_strings)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Corpus(strings[: config.train_strings], strings[config.train_strings : held], strings[held:end],
                  origin, digest)


def windows(strings: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (context, next symbol) pair: strings (S, L) -> contexts (S*(L-c), c), targets (S*(L-c),).

    Row s*(L-c) + (j-c) holds string s's symbols j-c..j-1 and target symbol j.
    """
    S, L = strings.shape
    ctx = strings.unfold(1, context, 1)[:, : L - context]  # (S, L-c, c)
    return ctx.reshape(-1, context), strings[:, context:].reshape(-1)


def one_hot_context(contexts: torch.Tensor, num_symbols: int = len(ALPHABET)) -> torch.Tensor:
    """(N, c) symbol indices -> (N, c*num_symbols) float one-hot, position-major."""
    return torch.nn.functional.one_hot(contexts, num_symbols).flatten(1).float()
