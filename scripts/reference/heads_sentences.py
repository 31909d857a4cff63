#!/usr/bin/env python3
"""The labelled sentences of tests/fixtures/heads_sentences.json (tests/classify.rs trains a
head on them through the API and compares it with scikit-learn, scripts/reference/heads_sklearn.py).

Four topics (sports, cooking, weather, technology); each sentence joins a subject and a
predicate written for its topic, picked by a seeded generator, so the set is varied, the
labels are unambiguous, and rerunning gives the same file. The examples are interleaved
(sports, cooking, weather, technology, sports, ...), 60 per topic.

    python3 scripts/reference/heads_sentences.py
"""

import json
import random

TOPICS = {
    "sports": (
        ["The striker", "Our goalkeeper", "The home team", "The young sprinter", "The coach",
         "The tennis champion", "The basketball squad", "The cyclist", "The referee",
         "The marathon runner", "The captain", "The visiting side"],
        ["scored twice in the second half.", "won the championship after extra time.",
         "trained at the stadium all week.", "was sent off for a foul.",
         "broke the national record in the final.", "lost the match on penalties.",
         "celebrated the victory with the fans.", "signed a new contract with the club.",
         "finished third in the race.", "defended well until the final whistle.",
         "picked the line-up for the derby.", "qualified for the Olympic games."],
    ),
    "cooking": (
        ["The chef", "My grandmother", "The baker", "The recipe", "Our cook",
         "The pastry student", "The restaurant kitchen", "The home cook", "The sous-chef",
         "The cookbook", "The caterer", "The soup"],
        ["simmered the onions slowly in butter.", "needs two cups of flour and a pinch of salt.",
         "roasted the chicken with garlic and rosemary.", "kneaded the dough before baking the bread.",
         "seasoned the sauce with fresh basil.", "whisked the eggs and sugar until pale.",
         "chopped the vegetables for the stew.", "let the cake cool before icing it.",
         "fried the fish in olive oil.", "added cream to thicken the soup.",
         "marinated the beef overnight.", "served the pasta with grated cheese."],
    ),
    "weather": (
        ["The forecast", "Heavy rain", "A cold front", "The storm", "Strong winds",
         "The morning fog", "Tomorrow", "The heatwave", "Thunder and lightning",
         "The snowfall", "The weather service", "A warm breeze"],
        ["brings showers across the north tonight.", "will push temperatures below freezing.",
         "flooded several roads near the river.", "is expected to clear by the afternoon.",
         "knocked down trees along the coast.", "will be sunny with a few clouds.",
         "warned of hail and gusts this evening.", "kept the airport closed until noon.",
         "left a thick layer of snow on the hills.", "made the humidity almost unbearable.",
         "should bring a dry and mild weekend.", "raised the risk of frost overnight."],
    ),
    "technology": (
        ["The new smartphone", "The software update", "Our database server",
         "The startup's app", "The laptop", "The programming language", "The cloud service",
         "The graphics card", "The operating system", "The web browser", "The robot",
         "The security patch"],
        ["ships with a faster processor and more memory.", "fixed a bug that crashed the program.",
         "stores millions of records on solid-state drives.", "uses machine learning to sort photos.",
         "runs the compiler twice as fast.", "encrypts every message end to end.",
         "lets developers deploy code in minutes.", "renders games at high frame rates.",
         "added support for wireless charging.", "blocks malicious websites automatically.",
         "connects to the network over fibre.", "was released as open source code."],
    ),
}


def main():
    rng = random.Random(18)
    per_topic = {}
    for topic, (subjects, predicates) in TOPICS.items():
        pairs = [(s, p) for s in subjects for p in predicates]
        rng.shuffle(pairs)
        per_topic[topic] = [f"{s} {p}" for s, p in pairs[:60]]
    examples = []
    for i in range(60):
        for topic in TOPICS:
            examples.append({"text": per_topic[topic][i], "label": topic})
    with open("tests/fixtures/heads_sentences.json", "w") as f:
        json.dump({"generator": "scripts/reference/heads_sentences.py", "examples": examples}, f, indent=1)
    print(f"{len(examples)} examples")


if __name__ == "__main__":
    main()
