"""Generate the sample prompt set inputs/news.{jsonl,parquet}.

Source: synthetic, written for batch-runner. Each row is a short local-news style report assembled
from hand-written sentence templates (towns, organisations and figures are invented), seeded so the
files are reproducible: ``python inputs/make_news.py``.
"""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TOWNS = ["Millbrook", "Harrow Bay", "Eastfield", "Copper Ridge", "Lindenport", "Westmere",
         "Oakhollow", "Saltmarsh", "Ferndale", "Kingsbridge", "Ashby Cross", "Riverton"]
TOPICS = {
    "transport": [
        "The {town} city council voted {a} to {b} on {day} to extend the number {n} bus line to the new hospital campus.",
        "Officials said the extension will add {k} stops and cost about {m} million dollars over two years.",
        "Riders had asked for the change since the old clinic closed in {year}, forcing patients to take two buses.",
        "Construction of shelters is expected to begin in {month}, and service should start the following spring.",
        "Council member {person} said the route would also serve {k2} new apartment buildings along Mill Road.",
    ],
    "schools": [
        "Students at {town} High School raised {m2} thousand dollars for a new robotics lab during a {k}-week fundraiser.",
        "The school board agreed on {day} to match the amount, bringing the total budget to twice that figure.",
        "Principal {person} said the lab will open in {month} and will be shared with two middle schools nearby.",
        "The robotics team finished {place} at the state championship last year using borrowed equipment.",
        "Parents volunteered {k2} hours to run bake sales, a car wash and an online auction.",
    ],
    "weather": [
        "Heavy rain flooded several streets in {town} on {day}, closing the river road for about {k} hours.",
        "The weather service recorded {r} centimetres of rain in a single afternoon, the most since {year}.",
        "No injuries were reported, but {k2} households lost power until crews restored lines late in the evening.",
        "Emergency manager {person} urged residents to clear storm drains and to avoid driving through standing water.",
        "Forecasters expect drier weather for the rest of the week, with temperatures near {t} degrees.",
    ],
    "business": [
        "A family-owned bakery in {town} will expand into the empty bank building on Main Street, its owners said on {day}.",
        "The move will let the bakery add {k} jobs and a small cafe with seating for {k2} people.",
        "Owner {person} said sales have grown every year since the shop opened in {year}.",
        "The town's planning board approved the change of use after a short public hearing with no objections.",
        "Renovation work is scheduled to finish in {month}, and the old storefront will stay open until then.",
    ],
    "health": [
        "The {town} regional clinic will offer free flu vaccinations on {day} and the following two Saturdays.",
        "Health director {person} said the clinic has {m2} thousand doses, enough for about a third of residents.",
        "Last winter, flu cases in the county peaked in {month} and filled the hospital's emergency ward for weeks.",
        "No appointment is needed, and nurses will also visit {k} care homes to vaccinate residents there.",
        "Officials recommend the shot for everyone older than six months, especially people over {age}.",
    ],
    "environment": [
        "Volunteers removed {m2} hundred kilograms of litter from the {town} shoreline during a cleanup on {day}.",
        "Organiser {person} said plastic bottles and fishing line made up most of what was collected.",
        "The group has held the cleanup every {month} since {year}, and this year drew {k2} volunteers.",
        "The town council plans to install {k} new recycling bins near the beach car parks before summer.",
        "Biologists said the cleanup helps nesting birds, which often get tangled in discarded line.",
    ],
    "culture": [
        "The {town} public library will host a week-long book festival starting {day}, with {k} visiting authors.",
        "Librarian {person} said the festival grew out of a reading club that began in {year} with eight members.",
        "Events include readings for children, a poetry evening and a workshop on writing family histories.",
        "Organisers expect about {k2} visitors, up from last year's attendance, and all events are free.",
        "The festival closes in {month} with a used-book sale that funds the library's summer programme.",
    ],
}
PEOPLE = ["Maria Lopez", "James Okafor", "Priya Raman", "Tom Becker", "Alice Nguyen", "Samuel Reyes",
          "Hannah Stein", "David Mensah", "Laura Petrov", "Kenji Sato", "Grace O'Neil", "Omar Haddad"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
MONTHS = ["March", "April", "May", "June", "September", "October", "November"]
PLACES = ["second", "third", "fourth", "fifth"]


def make_row(i: int, rng: random.Random) -> dict:
    topic = rng.choice(sorted(TOPICS))
    town = rng.choice(TOWNS)
    a = rng.randint(5, 9)
    values = dict(town=town, a=a, b=rng.randint(0, 4), day=rng.choice(DAYS), n=rng.randint(2, 40),
                  k=rng.randint(2, 12), k2=rng.randint(20, 400), m=round(rng.uniform(1.2, 9.8), 1),
                  m2=rng.randint(3, 90), year=rng.randint(2009, 2023), month=rng.choice(MONTHS),
                  person=rng.choice(PEOPLE), place=rng.choice(PLACES), r=rng.randint(4, 12),
                  t=rng.randint(14, 27), age=rng.choice([60, 65, 70]))
    sentences = TOPICS[topic]
    chosen = sentences[:1] + rng.sample(sentences[1:], rng.randint(2, len(sentences) - 1))
    text = " ".join(s.format(**values) for s in chosen)
    title = f"{town}: {topic} update"
    return {"id": f"news-{i:04d}", "topic": topic, "title": title, "text": text}


def main() -> None:
    rng = random.Random(20261127)
    rows = [make_row(i, rng) for i in range(240)]
    here = Path(__file__).parent
    with open(here / "news.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), here / "news.parquet")


if __name__ == "__main__":
    main()
