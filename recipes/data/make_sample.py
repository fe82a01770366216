"""Write the recipe's default input, recipes/data/sharegpt_sample.jsonl.gz: ShareGPT-style multi-turn
conversations composed for this project from the hand-written pools below (arithmetic, unit conversions,
small Python tasks, cooking, travel, study and science questions), plus planted messes that the recipe must handle:
HTML answers, mojibake, whitespace noise, exact and near duplicates, non-English conversations, boilerplate
refusals, over-long conversations, other role spellings and record shapes, and malformed lines of every kind.

Deterministic: `python recipes/data/make_sample.py` rewrites the same bytes.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("sharegpt_sample.jsonl.gz")
N_CONVERSATIONS = 2400

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mateo",
         "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe"]
FOODS = {
    "pancakes": ["flour", "milk", "eggs", "a pinch of salt", "butter for the pan"],
    "tomato soup": ["ripe tomatoes", "an onion", "two cloves of garlic", "vegetable stock", "olive oil"],
    "fried rice": ["day-old rice", "eggs", "spring onions", "soy sauce", "frozen peas"],
    "guacamole": ["avocados", "lime juice", "red onion", "coriander", "salt"],
    "banana bread": ["overripe bananas", "flour", "sugar", "baking soda", "melted butter"],
    "lentil curry": ["red lentils", "coconut milk", "curry paste", "spinach", "an onion"],
    "omelette": ["eggs", "butter", "grated cheese", "chives", "black pepper"],
    "hummus": ["chickpeas", "tahini", "lemon juice", "garlic", "olive oil"],
}
CITIES = {
    "Lisbon": ("Portugal", "trams and tiled facades", "pastel de nata", "spring or early autumn"),
    "Kyoto": ("Japan", "temples and gardens", "matcha sweets", "late autumn for the maple leaves"),
    "Mexico City": ("Mexico", "museums and markets", "tacos al pastor", "the dry season from November to April"),
    "Cape Town": ("South Africa", "Table Mountain and the coast", "bobotie", "the southern summer"),
    "Reykjavik": ("Iceland", "hot springs and the northern lights", "skyr", "winter for the aurora"),
    "Hanoi": ("Vietnam", "the Old Quarter and its lakes", "pho", "autumn, when it is dry and mild"),
    "Vienna": ("Austria", "concert halls and coffee houses", "Sachertorte", "December for the markets"),
    "Buenos Aires": ("Argentina", "tango and wide avenues", "empanadas", "spring, from September to November"),
}
SCIENCE = [
    ("Why is the sky blue?", "Sunlight is scattered by the molecules of the air, and shorter wavelengths scatter much more "
     "strongly than longer ones (Rayleigh scattering). Blue light is scattered all over the sky, so it reaches your eyes "
     "from every direction."),
    ("How do vaccines work?", "A vaccine shows the immune system a harmless piece or version of a pathogen. The body makes "
     "antibodies and memory cells, so a later infection is recognised and fought off quickly."),
    ("What causes the seasons?", "The Earth's axis is tilted by about 23.4 degrees. As the planet orbits the Sun, each "
     "hemisphere leans towards it for part of the year, getting longer days and more direct sunlight."),
    ("Why does ice float?", "Water expands when it freezes: the molecules lock into an open hexagonal lattice held by "
     "hydrogen bonds. Ice is therefore about nine percent less dense than liquid water."),
    ("What is photosynthesis?", "Plants use light energy to turn carbon dioxide and water into glucose, releasing oxygen. "
     "It happens in the chloroplasts, where chlorophyll absorbs mostly red and blue light."),
    ("How does a rainbow form?", "Sunlight enters raindrops, bends, reflects off the back of the drop and bends again on "
     "the way out. Each colour bends by a slightly different angle, which spreads the light into a band of colours."),
    ("What is entropy?", "Entropy measures how many microscopic arrangements are consistent with what we observe. Isolated "
     "systems tend towards states with more arrangements, which is why heat flows from hot to cold."),
    ("Why do we have tides?", "The Moon's gravity pulls more strongly on the near side of the Earth than on the far side. "
     "That difference stretches the oceans into two bulges, and the Earth rotates through them twice a day."),
]
STUDY_TIPS = ["Space your reviews out over several days instead of cramming.", "Test yourself before you reread the notes.",
              "Explain the idea aloud as if to a friend.", "Mix different kinds of problems in one session.",
              "Sleep well the night before; memory consolidates during sleep.", "Turn headings into questions and answer them.",
              "Keep a list of mistakes and revisit it weekly.", "Work in blocks of 25 to 50 minutes with short breaks."]
SUBJECTS = ["organic chemistry", "linear algebra", "Spanish vocabulary", "world history", "statistics", "music theory",
            "anatomy", "microeconomics", "the driving theory test", "Python programming"]
PY_TASKS = {
    "sum of the even numbers": "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
    "largest value": "def largest(xs):\n    if not xs:\n        raise ValueError(\"empty list\")\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best",
    "number of vowels": "def count_vowels(text):\n    return sum(ch in \"aeiouAEIOU\" for ch in text)",
    "reversed words": "def reverse_words(sentence):\n    return \" \".join(reversed(sentence.split()))",
    "running average": "def running_average(xs):\n    out, total = [], 0\n    for i, x in enumerate(xs, 1):\n        total += x\n        out.append(total / i)\n    return out",
    "duplicates": "def duplicates(xs):\n    seen, dups = set(), set()\n    for x in xs:\n        (dups if x in seen else seen).add(x)\n    return sorted(dups)",
    "factorial": "def factorial(n):\n    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result",
    "palindrome check": "def is_palindrome(text):\n    clean = [c.lower() for c in text if c.isalnum()]\n    return clean == clean[::-1]",
}
UNITS = [("miles", "kilometres", 1.609344), ("kilograms", "pounds", 2.20462), ("litres", "US gallons", 0.264172),
         ("inches", "centimetres", 2.54), ("feet", "metres", 0.3048), ("ounces", "grams", 28.3495)]
FOREIGN = [
    ("fr", [("Bonjour ! Peux-tu m'expliquer comment préparer une pâte à crêpes ?",
             "Bien sûr ! Mélangez 250 g de farine, quatre œufs et un demi-litre de lait, puis laissez reposer la pâte une heure."),
            ("Combien de temps faut-il la laisser reposer ?", "Une heure suffit, mais une nuit au réfrigérateur donne des crêpes encore plus souples.")]),
    ("es", [("¿Cuál es la mejor época para visitar Sevilla?",
             "La primavera es ideal: las temperaturas son agradables y se celebran la Semana Santa y la Feria de Abril."),
            ("¿Y qué debería comer allí?", "Prueba el salmorejo, las espinacas con garbanzos y, por supuesto, unas buenas tapas.")]),
    ("de", [("Wie kann ich mich besser auf Prüfungen vorbereiten?",
             "Lerne in kurzen Einheiten über mehrere Tage verteilt und teste dich selbst, statt nur die Notizen zu lesen."),
            ("Hilft Musik beim Lernen?", "Ruhige Musik ohne Text kann helfen, aber bei schwierigen Aufgaben ist Stille meistens besser.")]),
    ("zh", [("请问怎样才能提高写作水平？", "多读优秀的文章，每天坚持写一点，并请别人给你反馈。修改比初稿更重要。"),
            ("每天写多少比较合适？", "刚开始每天写三百字左右就很好，关键是坚持，而不是一次写很多。")]),
]


def arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    a, b = rng.randint(12, 999), rng.randint(3, 99)
    op = rng.choice(["plus", "minus", "times"])
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    sym = {"plus": "+", "minus": "−", "times": "×"}[op]
    turns = [(f"What is {a} {op} {b}?", f"{a} {sym} {b} = {value}.")]
    if rng.random() < 0.6:
        c = rng.randint(2, 9)
        turns.append((f"And if I divide that by {c}?", f"{value} ÷ {c} = {value / c:.4g}."
                      + (" It divides evenly." if value % c == 0 else f" The remainder is {value % c}.")))
    if rng.random() < 0.3:
        turns.append(("Can you show how to check it?", f"Work backwards: if {a} {sym} {b} = {value}, then undoing the "
                      f"operation on {value} with {b} must give {a} again, and it does."))
    return turns


def conversion(rng: random.Random) -> list[tuple[str, str]]:
    src, dst, factor = rng.choice(UNITS)
    x = rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 80), 1)])
    turns = [(f"How many {dst} are {x} {src}?", f"{x} {src} is about {x * factor:,.2f} {dst} "
              f"(1 {src[:-1] if src.endswith('s') else src} = {factor} {dst}).")]
    if rng.random() < 0.5:
        y = rng.randint(2, 40)
        turns.append((f"And {y} {dst} in {src}?", f"Divide by {factor}: {y} {dst} is about {y / factor:,.2f} {src}."))
    return turns


def python_task(rng: random.Random) -> list[tuple[str, str]]:
    task, code = rng.choice(list(PY_TASKS.items()))
    name = code.split("(")[0].replace("def ", "")
    sample = [rng.randint(-9, 20) for _ in range(rng.randint(3, 7))]
    turns = [(f"Write a Python function that returns the {task} of its input.",
              f"Here is a simple version:\n\n```python\n{code}\n```\n\nIt runs in linear time and needs no imports.")]
    if rng.random() < 0.7:
        turns.append((f"How would I test it with {sample}?", f"Call it and compare with a value you worked out by hand:\n\n"
                      f"```python\nresult = {name}({sample!r})\nprint(result)\n```\n\nFor edge cases also try an empty input."))
    if rng.random() < 0.3:
        turns.append(("Could it be written more compactly?", "Yes, with a comprehension or a built-in, but the explicit "
                      "loop is easier to read and to step through in a debugger, which matters more for most code."))
    return turns


def cooking(rng: random.Random) -> list[tuple[str, str]]:
    dish, items = rng.choice(list(FOODS.items()))
    n = rng.randint(2, 8)
    chosen = rng.sample(items, k=rng.randint(3, len(items)))
    turns = [(f"I want to make {dish} for {n} people. What do I need?",
              f"For {n} people you will need " + ", ".join(chosen[:-1]) + f" and {chosen[-1]}. "
              f"Start with the quantities of a standard recipe and scale them by {n / 4:g}.")]
    if rng.random() < 0.6:
        missing = rng.choice(items)
        turns.append((f"I don't have {missing}. Is that a problem?",
                      f"You can usually leave out {missing} or replace it with something similar; the {dish} "
                      f"will taste a little different but still work."))
    if rng.random() < 0.4:
        turns.append(("How long will it keep?", f"In a closed container in the fridge, {dish} keeps for "
                      f"{rng.randint(2, 4)} days. Reheat only the portion you are going to eat."))
    return turns


def travel(rng: random.Random) -> list[tuple[str, str]]:
    city, (country, sights, food, season) = rng.choice(list(CITIES.items()))
    days = rng.randint(2, 10)
    who = rng.choice(NAMES)
    turns = [(f"My friend {who} and I have {days} days in {city}. What should we see?",
              f"{city} is known for {sights}. With {days} days, spend the first on a walking tour of the centre, "
              f"then pick one area per day so you are not always in transit.")]
    if rng.random() < 0.6:
        turns.append(("What food should we try?", f"Try {food}; it is one of the things {country} does best, and "
                      f"local markets are the cheapest place to taste it."))
    if rng.random() < 0.5:
        turns.append(("When is the best time to go?", f"Most people recommend {season}."))
    return turns


def study(rng: random.Random) -> list[tuple[str, str]]:
    subject = rng.choice(SUBJECTS)
    weeks = rng.randint(1, 12)
    tips = rng.sample(STUDY_TIPS, k=3)
    turns = [(f"I have an exam in {subject} in {weeks} week{'s' if weeks > 1 else ''}. How should I study?",
              "Three things help most:\n\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(tips, 1)))]
    if rng.random() < 0.5:
        hours = rng.randint(1, 4)
        turns.append((f"Is {hours} hour{'s' if hours > 1 else ''} a day enough?",
                      f"For {weeks} week{'s' if weeks > 1 else ''}, {hours} focused hour{'s' if hours > 1 else ''} a day "
                      f"adds up to about {hours * 7 * weeks} hours, which is plenty if you test yourself regularly."))
    return turns


def science(rng: random.Random) -> list[tuple[str, str]]:
    picks = rng.sample(SCIENCE, k=rng.randint(1, 3))
    return [(q if i == 0 else f"Another question: {q[0].lower()}{q[1:]}", a) for i, (q, a) in enumerate(picks)]


GENERATORS = [arithmetic, conversion, python_task, cooking, travel, study, science]
ROLE_SPELLINGS = [("human", "gpt"), ("human", "gpt"), ("human", "gpt"), ("user", "assistant"), ("human", "chatgpt"),
                  ("human", "bing"), ("human", "bard")]


def sharegpt(cid: str, turns: list[tuple[str, str]], rng: random.Random, system: str | None = None, **extra) -> dict:
    u, a = rng.choice(ROLE_SPELLINGS)
    conv = [{"from": "system", "value": system}] if system else []
    for q, ans in turns:
        conv += [{"from": u, "value": q}, {"from": a, "value": ans}]
    return {"id": cid, **extra, "conversations": conv}


def html_answer(text: str) -> str:
    paras = "".join(f"<p>{p}</p>" for p in text.split("\n\n") if not p.startswith("```"))
    return ('<div class="markdown prose w-full break-words"><p>Sure, here is what I suggest:</p>' + paras
            + "<ol><li>Read it once.</li><li>Try it yourself.</li></ol>"
            + '<pre><div class="bg-black"><button class="flex ml-auto gap-2"><svg></svg>Copy code</button></div>'
            + "<code>print(&quot;done&quot;)</code></pre></div>")


def mojibake(text: str) -> str:
    import ftfy.bad_codecs  # noqa: F401 - registers sloppy-windows-1252

    return text.encode("utf-8").decode("sloppy-windows-1252")


def main() -> None:
    rng = random.Random(20240530)
    lines: list[str] = []
    records: list[dict] = []
    for i in range(N_CONVERSATIONS):
        gens = rng.sample(GENERATORS, k=rng.choice([1, 1, 2]))
        if gens == [science]:  # a handful of fixed answers: on its own it would mostly repeat
            gens.insert(0, rng.choice(GENERATORS[:-1]))
        turns = [t for g in gens for t in g(rng)]
        system = "You are a helpful, concise assistant." if rng.random() < 0.1 else None
        extra = {"model": rng.choice(["gpt-3.5-turbo", "gpt-4", "bard"])} if rng.random() < 0.3 else {}
        records.append(sharegpt(f"sg{i:05d}", turns, rng, system, **extra))

    # Planted messes on some of the good records.
    for rec in rng.sample(records, 25):  # ShareGPT page scrapes: HTML answers
        turn = next(t for t in rec["conversations"] if t["from"] not in ("human", "user", "system"))
        turn["value"] = html_answer(turn["value"])
    for rec in rng.sample(records, 25):  # mojibake: curly quotes and accents read as Windows-1252
        turn = rec["conversations"][-1]
        turn["value"] = mojibake("It’s “café-style” crème brûlée — " + turn["value"])
    for rec in rng.sample(records, 30):  # whitespace noise
        turn = rec["conversations"][-1]
        turn["value"] = "  " + turn["value"].replace("\n", "  \r\n") + "\n\n\n\n\u00a0 "
    for rec in rng.sample(records, 15):  # boilerplate refusals
        rec["conversations"][-1]["value"] = ("As an AI language model, I cannot have personal opinions, but "
                                             + rec["conversations"][-1]["value"])
    lines += [json.dumps(r, ensure_ascii=False) for r in records]

    originals = rng.sample(records, 60)
    for k, rec in enumerate(originals[:20]):  # exact duplicates up to case and whitespace
        dup = json.loads(json.dumps(rec))
        dup["id"] = f"dup{k:03d}"
        for t in dup["conversations"]:
            t["value"] = t["value"].replace(" ", "  ", 1).upper() if k % 2 else t["value"] + "  "
        lines.append(json.dumps(dup, ensure_ascii=False))
    for k, rec in enumerate(originals[20:]):  # near duplicates: a small edit in the last answer
        near = json.loads(json.dumps(rec))
        near["id"] = f"near{k:03d}"
        last = near["conversations"][-1]
        last["value"] = last["value"] + " Let me know if you want more detail."
        lines.append(json.dumps(near, ensure_ascii=False))

    for k in range(40):  # other languages (dropped by the default language filter)
        lang, pairs = FOREIGN[k % len(FOREIGN)]
        turns = pairs[: 1 + k % 2]
        lines.append(json.dumps(sharegpt(f"{lang}{k:03d}", [(q + f" ({k})", a) for q, a in turns], rng),
                                ensure_ascii=False))

    long_turns = [(f"Part {j + 1}: explain step {j + 1} of planning a {rng.choice(list(CITIES))} trip in depth.",
                   " ".join(f"Step {j + 1}, point {p}: " + rng.choice(SCIENCE)[1] for p in range(12)))
                  for j in range(8)]
    lines.append(json.dumps(sharegpt("long000", long_turns, rng, "You are a travel planner."), ensure_ascii=False))
    lines.append(json.dumps(sharegpt("long001", long_turns[::-1], rng), ensure_ascii=False))

    # Other record shapes in the same file: OpenAI-style messages and Alpaca.
    for k in range(10):
        turns = cooking(rng)
        msgs = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        lines.append(json.dumps({"id": f"oai{k:03d}", "messages": msgs}, ensure_ascii=False))
    for k in range(10):
        (q, a), = conversion(rng)[:1]
        lines.append(json.dumps({"instruction": q, "input": "", "output": a}, ensure_ascii=False))

    # Malformed records: each becomes a drops row with its reason.
    bad = [
        '{"id": "bad_json", "conversations": [{"from": "human", "value": "unterminated',
        json.dumps({"id": "bad_missing", "text": "no conversations here"}),
        json.dumps({"id": "bad_role", "conversations": [{"from": "human", "value": "What is the weather?"},
                                                        {"from": "function_call", "value": "{\"name\": \"weather\"}"}]}),
        json.dumps({"id": "bad_alternation", "conversations": [{"from": "human", "value": "Hello?"},
                                                               {"from": "human", "value": "Anyone there?"},
                                                               {"from": "gpt", "value": "Yes, hello!"}]}),
        json.dumps({"id": "bad_empty", "conversations": [{"from": "human", "value": "Say something."},
                                                         {"from": "gpt", "value": "   "}]}),
        json.dumps({"id": "bad_nonstring", "conversations": [{"from": "human", "value": "How many?"},
                                                             {"from": "gpt", "value": 42}]}),
        json.dumps({"id": "bad_first", "conversations": [{"from": "gpt", "value": "I speak first."},
                                                         {"from": "human", "value": "Odd."}]}),
        json.dumps({"id": "bad_system", "conversations": [{"from": "human", "value": "Hi"},
                                                          {"from": "system", "value": "Be brief."},
                                                          {"from": "gpt", "value": "Hello."}]}),
        json.dumps({"id": "bad_noanswer", "conversations": [{"from": "human", "value": "Is anyone answering?"}]}),
        json.dumps({"id": "bad_emptyconv", "conversations": []}),
        json.dumps(["not", "an", "object"]),
    ]
    for k, line in enumerate(bad):
        lines.insert(100 + 97 * k, line)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    invalid = b'{"id": "bad_utf8", "conversations": [{"from": "human", "value": "caf\xe9 \xff"}]}\n'
    cut = data.index(b"\n", len(data) // 2) + 1
    data = data[:cut] + invalid + data[cut:]
    with gzip.GzipFile(OUT, "wb", mtime=0) as fh:
        fh.write(data)
    n_lines = data.count(b"\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes compressed, {len(data):,} raw, {n_lines:,} lines)")


if __name__ == "__main__":
    main()
