"""The prompt set for training the default model's head: a topic x task grid, and held-out open prompts.

Every prompt is built here from two lists written for this project (so the set is licence-clean,
needs no download and is the same on every machine): ``TOPICS`` x ``TASKS`` gives the training
grid; ``OPEN_PROMPTS`` are free-form requests on topics that are not in the grid, phrased
differently, for measuring acceptance on prompts the head never saw in any form.

Why a grid: the head must predict the target's own answers, so what matters is the variety of
answers (explanations, stories, lists, letters, poems, advice, comparisons) over many subjects,
not the prompts' realism. A grid covers that evenly and deterministically; a seeded shuffle
spreads topics and tasks over any prefix, so a first shard already covers most tasks.
"""

from __future__ import annotations

import random

__all__ = ["MORE_TOPICS", "OPEN_PROMPTS", "TASKS", "TOPICS", "grid_prompts"]

TOPICS = (
    "volcanoes", "the water cycle", "honeybees", "the printing press", "black holes", "photosynthesis",
    "the Roman Empire", "electric cars", "coral reefs", "the human heart", "vaccines", "solar panels",
    "the internet", "chess", "coffee", "the Great Wall of China", "earthquakes", "recycling",
    "the French Revolution", "penguins", "rainbows", "bread baking", "the stock market", "dinosaurs",
    "the Moon landing", "clouds", "friendship", "sleep", "climate change", "the piano", "trains",
    "ancient Egypt", "mushrooms", "magnets", "the Olympic Games", "libraries", "deserts", "bicycles",
    "the immune system", "glaciers", "robots", "tea", "the Renaissance", "owls", "gardening", "bridges",
    "money", "music festivals", "the ocean floor", "airplanes", "kindness", "mathematics", "maps",
    "wolves", "rivers", "the telescope", "chocolate", "video games", "time zones", "the alphabet",
)  # fmt: skip

# The second grid (prompts 720..1439), appended so that the first grid's prompts, and the data shards
# built from them, keep their places. No topic of the held-out open prompts (tides, the sky, lighthouses,
# blacksmiths, guitars, the Moon, refrigerators, dragons, weather, cats, computer programs, picnics,
# leaders, plants, sports teams).
MORE_TOPICS = (
    "the Silk Road", "octopuses", "snowflakes", "the Eiffel Tower", "electricity", "butterflies", "the Vikings",
    "hot air balloons", "the human brain", "pizza", "lightning", "Mount Everest", "origami",
    "the Industrial Revolution", "elephants", "comets", "public transport", "yoga", "the periodic table",
    "board games", "the Amazon rainforest", "jellyfish", "windmills", "photography", "ancient Greece",
    "cheese making", "satellites", "kangaroos", "the postal service", "fireworks", "museums", "bird migration",
    "skyscrapers", "knitting", "sharks", "the theory of evolution", "the Maya civilization", "volunteering",
    "hiking", "submarines", "the Arctic", "bamboo", "spiders", "wind energy", "dreams", "marathons", "ice cream",
    "camping", "space stations", "fossils", "the Nile", "soap", "pottery", "the calendar", "journalism",
    "3D printing", "cryptography", "handwriting", "dolphins", "solar eclipses",
)  # fmt: skip

TASKS = (
    "Explain {topic} to a ten-year-old.",
    "Write a short story that involves {topic}.",
    "List five interesting facts about {topic}.",
    "What are the main advantages and disadvantages of {topic}?",
    "Write a short poem about {topic}.",
    "Describe the history of {topic} in a few paragraphs.",
    "Give practical advice to a beginner who wants to learn about {topic}.",
    "Summarize the most important ideas about {topic}.",
    "Write a friendly email to a colleague about {topic}.",
    "What are common misconceptions about {topic}?",
    "Why does {topic} matter today?",
    "Write a dialogue between two friends discussing {topic}.",
)

# Held out: topics and phrasings absent from the grid.
OPEN_PROMPTS = (
    "Explain how tides work.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Why is the sky blue?",
    "Describe a day in the life of a medieval blacksmith.",
    "Give me some tips for learning to play the guitar.",
    "What would happen if the Moon disappeared?",
    "How does a refrigerator keep food cold?",
    "Tell me a bedtime story about a dragon who is afraid of the dark.",
    "What is the difference between weather and climate?",
    "Write a letter from a cat to its owner.",
    "How do airplanes stay in the air?",
    "Explain what a computer program is.",
    "Describe the perfect picnic.",
    "What makes a good leader?",
    "How do plants know which way is up?",
    "Write a motivational speech for a school sports team.",
)


def grid_prompts(seed: int = 0) -> list[str]:
    """Every topic x task prompt: ``TOPICS``' grid then ``MORE_TOPICS``', each in a seeded shuffle (1,440)."""
    prompts = []
    for number, topics in enumerate((TOPICS, MORE_TOPICS)):
        grid = [task.format(topic=topic) for topic in topics for task in TASKS]
        random.Random(seed + number).shuffle(grid)
        prompts += grid
    return prompts
