"""``python -m models.seed``: a demo competition with questions, ready for the README example.

Idempotent: running it again leaves an existing demo competition as it is.
"""

from __future__ import annotations

import logging
import sys

from sqlalchemy import create_engine, pool, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.tables import Competition, Question
from settings import Settings

log = logging.getLogger("models.seed")

SLUG = "demo"

BOARD = [
    ("Q1", "What is 6 x 7?", "42", 100, "EASY", "maths", ["40", "42", "48"]),
    ("Q2", "What is the chemical symbol for gold?", "Au", 100, "EASY", "science", ["Ag", "Au", "Gd"]),
    ("Q3", "Which planet is known as the red planet?", "Mars", 100, "EASY", "science", []),
    ("Q4", "What is the square root of 169?", "13", 150, "MEDIUM", "maths", []),
    ("Q5", "In which year did the Berlin Wall fall?", "1989", 150, "MEDIUM", "history", []),
    ("Q6", "What is the capital of Australia?", "Canberra", 150, "MEDIUM", "geography", []),
    ("Q7", "What is the derivative of x^3?", "3x^2", 200, "HARD", "maths", []),
    ("Q8", "Who wrote 'The Master and Margarita'?", "Mikhail Bulgakov", 200, "HARD", "literature", []),
    ("Q9", "How many bits are in a byte?", "8", 100, "EASY", "computing", []),
    ("Q10", "What is the smallest prime number?", "2", 100, "EASY", "maths", []),
]
MYSTERY = [
    ("M1", "What is 12 squared?", "144", "EASY"),
    ("M2", "What is the largest ocean on Earth?", "Pacific", "EASY"),
    ("M3", "What gas do plants absorb from the air?", "Carbon dioxide", "MEDIUM"),
    ("M4", "Which element has atomic number 26?", "Iron", "MEDIUM"),
    ("M5", "What is the sum of the interior angles of a hexagon, in degrees?", "720", "HARD"),
    ("M6", "Who proved the incompleteness theorems?", "Kurt Godel", "HARD"),
]


def seed(session: Session) -> bool:
    """Create the demo competition (state running) if it is absent; True if it was created."""
    created = session.scalar(
        pg_insert(Competition)
        .values(slug=SLUG, title="Demo quiz night", state="running")
        .on_conflict_do_nothing()
        .returning(Competition.id)
    )
    if created is None:
        return False
    session.add_all(
        Question(competition_id=created, code=code, text=text, answer=answer, points=points,
                 difficulty=difficulty, category=category, options=options, kind="board")
        for code, text, answer, points, difficulty, category, options in BOARD
    )
    session.add_all(
        Question(competition_id=created, code=code, text=text, answer=answer, points=0,
                 difficulty=difficulty, kind="mystery")
        for code, text, answer, difficulty in MYSTERY
    )
    return True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    engine = create_engine(settings.database_url, poolclass=pool.NullPool)
    with Session(engine) as session, session.begin():
        created = seed(session)
        state = session.scalar(select(Competition.state).where(Competition.slug == SLUG))
    engine.dispose()
    log.info("%s competition %r (%s)", "created" if created else "kept the existing", SLUG, state)
    print(SLUG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
