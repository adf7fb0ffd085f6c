"""A small labelled retrieval corpus, generated here (no download; written for this
project and licensed with it, Apache-2.0).

It is built so that each retriever alone misses answers the other finds:

* *semantic* pairs: a query and its answer share no content word (paraphrases), so a
  lexical retriever cannot match them but a dense one can;
* *lexical* pairs: the answer is a text about something else that mentions a code
  such as ``QZX-4471`` once; the query asks about an order with that code. A lexical
  retriever matches the rare code exactly; a dense one prefers the many order and ticket
  documents (with other codes) that read like the query.

Plus unrelated distractors. Deterministic for a given seed.
"""

from __future__ import annotations

import random

SEMANTIC = [
    ("how do I repair a flat bicycle tyre",
     "Fixing a punctured bike wheel: patch the inner tube, then pump it up again."),
    ("cheap flights to Paris", "Low-cost airline tickets for journeys to the French capital."),
    ("my laptop will not turn on", "The notebook computer stays dark when the power button is "
     "pressed."),
    ("symptoms of the flu", "Influenza usually brings fever, aching muscles, chills and a cough."),
    ("best way to learn a language", "Fluency in a foreign tongue comes fastest from daily "
     "conversation practice."),
    ("how to bake sourdough bread", "Making a naturally leavened loaf: feed the starter, knead, "
     "proof overnight, then fire it in a hot oven."),
    ("dog keeps barking at night", "A puppy that howls after dark often needs more exercise "
     "during the day."),
    ("reduce my electricity bill", "Lower power costs at home by insulating walls and switching "
     "off idle appliances."),
    ("what causes earthquakes", "Tremors happen when tectonic plates slip along faults deep "
     "underground."),
    ("car engine overheating", "When the motor runs too hot, check the coolant level and the "
     "radiator fan."),
    ("tips for sleeping better", "Rest more soundly by keeping a regular bedtime and a dark, "
     "cool bedroom."),
    ("invest for retirement", "Saving toward a pension: index funds spread risk across many "
     "shares."),
    ("remove a red wine stain", "Blot spilled merlot immediately, then cover the spot with salt "
     "and rinse with cold water."),
    ("growing tomatoes on a balcony", "Cherry plants thrive in pots outdoors on a sunny terrace "
     "if watered daily."),
    ("why is the sky blue", "Sunlight scatters off air molecules, and shorter wavelengths "
     "scatter most, tinting the heavens azure."),
    ("how to write a resume", "A good CV lists achievements, skills and employment history on "
     "one clear page."),
]

TEMPLATES = [
    "Order reference {code}: the shipment left our warehouse and is on its way to you.",
    "Support ticket {code} was opened about a login problem and assigned to an engineer.",
    "Invoice {code} covers the monthly subscription and is due within thirty days.",
]

DISTRACTORS = [
    "The museum opens a new exhibition of modern sculpture next spring.",
    "Quarterly revenue grew faster than analysts expected.",
    "The river flooded the lower town after a week of heavy rain.",
    "Chess engines now search millions of positions every second.",
    "The orchestra rehearsed the symphony for the last time before the premiere.",
    "Volcanic ash grounded flights across the region for two days.",
    "Honeybees communicate the location of flowers with a waggle dance.",
    "The committee postponed its vote on the new zoning rules.",
    "Glaciers in the mountains have retreated for decades.",
    "The recipe calls for two cups of flour and a pinch of salt.",
]


def _code(rng: random.Random) -> str:
    letters = "".join(rng.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(3))
    return f"{letters}-{rng.randint(1000, 9999)}"


def labelled_corpus(per_template: int = 40, lexical_queries: int = 16, seed: int = 7):
    """``(documents, queries)``: documents are ``{"id", "text"}``; queries are
    ``{"id", "text", "relevant": [doc ids], "kind": "semantic" | "lexical"}``."""
    rng = random.Random(seed)
    docs: list[dict] = []
    queries: list[dict] = []
    for i, (query, answer) in enumerate(SEMANTIC):
        docs.append({"id": f"sem-{i}", "text": answer})
        queries.append({"id": f"q-sem-{i}", "text": query, "relevant": [f"sem-{i}"],
                        "kind": "semantic"})
    codes: set[str] = set()

    def fresh_code() -> str:
        code = _code(rng)
        while code in codes:
            code = _code(rng)
        codes.add(code)
        return code

    for t, template in enumerate(TEMPLATES):
        for j in range(per_template):
            docs.append({"id": f"tpl-{t}-{j}", "text": template.format(code=fresh_code())})
    for n in range(lexical_queries):
        code = fresh_code()
        topic = " ".join(rng.sample(DISTRACTORS, 3))
        docs.append({"id": f"lex-{n}", "text": f"{topic} Filed under reference {code}."})
        queries.append({"id": f"q-lex-{n}", "text": f"where is {code}",
                        "relevant": [f"lex-{n}"], "kind": "lexical"})
    for i, text in enumerate(DISTRACTORS):
        docs.append({"id": f"other-{i}", "text": text})
    return docs, queries


def recall_at(hits_by_query: dict[str, list[str]], queries: list[dict], k: int = 10) -> float:
    found = sum(bool(set(q["relevant"]) & set(hits_by_query[q["id"]][:k])) for q in queries)
    return found / len(queries) if queries else 0.0
