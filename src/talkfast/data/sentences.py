"""Built-in short English sentences for the synthetic talking-head corpus.

Written for this project. They mix bilabials, rounded and open vowels so that the mouth target
moves a lot, and each takes about 1.5-3.5 s to speak at espeak's default rate. A sentence's id is
its index in :data:`SENTENCES`; never reorder the list, only append (ids are stored in corpora).
"""

from __future__ import annotations

__all__ = ["SENTENCES", "sentence"]

SENTENCES: tuple[str, ...] = (
    "Bring me the blue box by the window.",
    "My father made a map of the old harbour.",
    "Open the door and look outside.",
    "We watched the moon rise over the water.",
    "Please pass the bread and butter.",
    "A small boat sailed past the pier.",
    "The market opens at nine every morning.",
    "You should put a warm coat on today.",
    "Paul bought apples, plums and a melon.",
    "How about a walk along the beach?",
    "The baby laughed at the bouncing ball.",
    "Mum wants more milk for the porridge.",
    "Who moved my umbrella from the hallway?",
    "Father opened a bottle of lemonade.",
    "The big brown bear ate all the berries.",
    "Our train leaves from platform five.",
    "I am happy to meet you at last.",
    "Bob paints pictures of mountains and lakes.",
    "Wow, what a wonderful morning!",
    "The farmer feeds the pigs at noon.",
    "Maybe we can go to the museum tomorrow.",
    "Her mother plays the piano beautifully.",
    "Pour a cup of hot water for me.",
    "The purple balloon floated away.",
    "We bought a new map for the trip.",
    "A cool breeze blew over the meadow.",
    "Put the books back on the top shelf.",
    "Mark made a cake for his brother.",
    "Look, the moon is bright tonight.",
    "Bees buzz around the blooming flowers.",
    "My room is on the second floor.",
    "The boy ran home before the storm.",
    "Peter picked a bunch of pink roses.",
    "We ought to go home soon.",
    "Amazing birds were flying above the bay.",
    "Bake the bread for about an hour.",
    "Nobody knows where the old map went.",
    "Mop the floor before the party.",
    "The mouse hid beneath the wooden bench.",
    "Oh, I forgot my umbrella again!",
    "Please remember to lock the back door.",
    "The wolf howled at the full moon.",
    "Bob and Mary walked to the market.",
    "A bowl of soup would be perfect now.",
    "Move the boxes into the basement.",
    "Mobile phones are banned in the library.",
    "Every morning I go for a swim.",
    "The blue bird sang a happy tune.",
    "Fold the paper in half, then open it.",
    "A famous poet wrote about the ocean.",
    "My brother borrowed my bicycle.",
    "Our school bus was late this morning.",
    "Beautiful music filled the old hall.",
    "Pam woke up at five and made coffee.",
    "Hold the rope and pull it slowly.",
    "Bubbles popped above the warm bath.",
    "Many people walked by the palace.",
    "Would you like more potatoes?",
    "The boat rocked gently on the waves.",
    "Mike bought a blue bowl at the fair.",
    "Who painted the moon on the ceiling?",
    "The puppy barked at a passing bus.",
    "Maybe the answer is obvious.",
    "Put your boots by the open fire.",
    "A map of Paris hangs above my desk.",
    "Owls hoot softly at midnight.",
    "Bob made a model of a boat.",
    "We often go out for pizza on Fridays.",
    "Bright orange pumpkins grow by the barn.",
    "Please be polite when you speak.",
    "The museum opens at noon on Mondays.",
    "My aunt bought a bottle of perfume.",
    "Bobby wore a woolly hat and mittens.",
    "Walk slowly around the pool.",
    "A warm bath is what I want now.",
    "Open your book to page forty.",
    "Mom baked a pie for our neighbours.",
    "Pablo plays the bongo drums.",
    "How much does a movie ticket cost?",
    "Maple syrup pours very slowly.",
)


def sentence(sentence_id: int) -> str:
    """The text of built-in sentence ``sentence_id``."""
    if not 0 <= int(sentence_id) < len(SENTENCES):
        raise IndexError(f"sentence id {sentence_id} out of range 0..{len(SENTENCES) - 1}")
    return SENTENCES[int(sentence_id)]
