"""Built-in prompt sets that need no data files.

``ANCHOR_*`` prompts are replayed during training, with the frozen original model as teacher, to hold
unrelated behaviour in place. ``PROBE_*`` prompts are scored before and after an update to measure
retention. The two sets are disjoint, so retention is measured on prompts the update never saw.
The questions are easy general knowledge written for this project; correct letters are balanced
(each letter is right equally often in each set), so a shift towards one letter shows up as lost
accuracy and as a change of letter mass.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from .tasks.mc import MCQuestion


def _mc(prefix: str, rows: Sequence[tuple[str, list[str], int]]) -> list[MCQuestion]:
    return [MCQuestion(q, list(c), a, subject="general", id=f"{prefix}-{i:02d}")
            for i, (q, c, a) in enumerate(rows, start=1)]


ANCHOR_MC = _mc("anchor", [
    ("What is the largest ocean on Earth?", ["Pacific", "Atlantic", "Indian", "Arctic"], 0),
    ("How many legs does a spider have?", ["Six", "Eight", "Ten", "Twelve"], 1),
    ("Which gas do plants absorb from the air for photosynthesis?",
     ["Oxygen", "Nitrogen", "Carbon dioxide", "Helium"], 2),
    ("What is 9 multiplied by 7?", ["56", "72", "81", "63"], 3),
    ("Which country is home to the city of Kyoto?", ["Japan", "China", "Korea", "Vietnam"], 0),
    ("What is the freezing point of water in degrees Celsius?", ["-10", "0", "10", "32"], 1),
    ("Who wrote the play 'Romeo and Juliet'?",
     ["Charles Dickens", "Jane Austen", "William Shakespeare", "Mark Twain"], 2),
    ("Which planet is known as the Red Planet?", ["Venus", "Jupiter", "Saturn", "Mars"], 3),
    ("What is the main language spoken in Brazil?",
     ["Portuguese", "Spanish", "French", "Italian"], 0),
    ("How many minutes are in an hour?", ["30", "60", "90", "100"], 1),
    ("Which organ pumps blood through the human body?", ["Liver", "Lungs", "Heart", "Kidney"], 2),
    ("What is the chemical symbol for gold?", ["Ag", "Gd", "Go", "Au"], 3),
    ("Which animal is the largest mammal?",
     ["Blue whale", "Elephant", "Giraffe", "Hippopotamus"], 0),
    ("What is the square root of 81?", ["8", "9", "7", "10"], 1),
    ("In which continent is Egypt?", ["Asia", "Europe", "Africa", "South America"], 2),
    ("Which instrument has 88 keys?", ["Guitar", "Violin", "Flute", "Piano"], 3),
    ("What do bees make?", ["Honey", "Silk", "Wax paper", "Milk"], 0),
    ("Which shape has three sides?", ["Square", "Triangle", "Pentagon", "Circle"], 1),
    ("What is the opposite of 'ancient'?", ["Old", "Historic", "Modern", "Antique"], 2),
    ("Which metal is liquid at room temperature?", ["Iron", "Copper", "Silver", "Mercury"], 3),
    ("What is the capital of Italy?", ["Rome", "Milan", "Venice", "Naples"], 0),
    ("How many days are in a leap year?", ["365", "366", "364", "360"], 1),
    ("Which data structure works first-in, first-out?", ["Stack", "Tree", "Queue", "Heap"], 2),
    ("What color do you get by mixing blue and yellow?", ["Purple", "Orange", "Red", "Green"], 3),
])

@functools.cache
def exam_questions() -> tuple[MCQuestion, ...]:
    """The built-in *exam* anchor questions (``data/exam_anchors.jsonl``, 208 of them): exam-style
    four-option questions across some 40 subjects of a school and university curriculum, written
    for this project (no benchmark data), each letter right 52 times. Replay anchors of the kind
    the MMLU retention probes are, for users without benchmark data: MMLU dev questions as anchors
    halved the retention KL of explanation updates on the MMLU probes whether there were 24 or 251
    of them, but only the 251 halved it on the open chat probes (``reports/specificity.md``,
    ``dev_anchors24``), so the set is large and varied. The first 24 are the set of that size.
    Read on first use (not at import), once; a tuple, so no caller can change the cached set."""
    from .retention import load_probes

    return tuple(load_probes(Path(__file__).parent / "data" / "exam_anchors.jsonl"))

PROBE_MC = _mc("probe", [
    ("What is the capital of France?", ["Paris", "Berlin", "London", "Madrid"], 0),
    ("How many continents are there?", ["Five", "Seven", "Six", "Eight"], 1),
    ("What is the boiling point of water at sea level in degrees Celsius?",
     ["90", "110", "100", "120"], 2),
    ("Which is the smallest prime number?", ["0", "1", "3", "2"], 3),
    ("Which planet is closest to the Sun?", ["Mercury", "Venus", "Earth", "Mars"], 0),
    ("What is 12 plus 15?", ["25", "27", "28", "30"], 1),
    ("Who painted the Mona Lisa?",
     ["Vincent van Gogh", "Pablo Picasso", "Leonardo da Vinci", "Claude Monet"], 2),
    ("Which gas makes up most of Earth's atmosphere?",
     ["Oxygen", "Carbon dioxide", "Argon", "Nitrogen"], 3),
    ("What is the longest river in Africa?", ["Nile", "Congo", "Niger", "Zambezi"], 0),
    ("How many sides does a hexagon have?", ["Five", "Six", "Seven", "Eight"], 1),
    ("Which language is primarily spoken in Mexico?", ["English", "French", "Spanish", "Dutch"], 2),
    ("What is the hardest natural substance?", ["Gold", "Iron", "Quartz", "Diamond"], 3),
    ("Which animal is known for changing its skin color to blend in?",
     ["Chameleon", "Dog", "Horse", "Rabbit"], 0),
    ("What is 100 divided by 4?", ["20", "25", "30", "40"], 1),
    ("Which country has the largest population in South America?",
     ["Argentina", "Chile", "Brazil", "Peru"], 2),
    ("What is H2O commonly called?", ["Salt", "Sugar", "Oil", "Water"], 3),
    ("Which keyword defines a function in Python?", ["def", "func", "function", "lambda_def"], 0),
    ("How many hours are in a day?", ["12", "24", "36", "48"], 1),
    ("Which is the tallest mountain above sea level?", ["K2", "Kilimanjaro", "Everest", "Denali"], 2),
    ("Which season follows summer in the Northern Hemisphere?",
     ["Spring", "Winter", "Summer", "Autumn"], 3),
    ("What is the currency of Japan?", ["Yen", "Won", "Yuan", "Rupee"], 0),
    ("Which bird is a common symbol of peace?", ["Eagle", "Dove", "Crow", "Owl"], 1),
    ("What is the largest planet in the Solar System?", ["Saturn", "Earth", "Jupiter", "Neptune"], 2),
    ("Which sense is associated with the nose?", ["Sight", "Hearing", "Touch", "Smell"], 3),
])

ANCHOR_CHAT = [
    "Write a haiku about autumn.",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for writing clear emails.",
    "Write a Python function that returns the maximum of a list.",
    "What is the difference between weather and climate?",
    "Suggest a name for a friendly robot.",
]

PROBE_CHAT = [
    "Write a limerick about a cat.",
    "Explain recursion to a ten-year-old.",
    "List three benefits of regular exercise.",
    "Write a Python function that reverses a string.",
    "Why is the sky blue? Answer briefly.",
    "Describe a sunset in one sentence.",
]


def mmlu_probe(n: int = 200, seed: int = 0, exclude_subjects: Sequence[str] = (),
               data_dir: str | Path | None = None) -> list[MCQuestion]:
    """``n`` MMLU test questions from subjects other than ``exclude_subjects`` (for the
    reproductions' retention measurement: questions unrelated to what was learned)."""
    from .tasks.data import load_mmlu
    from .tasks.mc import sample_questions

    return sample_questions(load_mmlu("test", data_dir=data_dir), n, seed, exclude_subjects)
