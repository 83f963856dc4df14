"""Kept for tools that run against several commits (``bench --compare`` asks a tree for its queues
with ``workers.routing.all_queues``); the routing itself lives in ``models.kinds``."""

from models.kinds import REGISTRATIONS, all_queues, board_queue, competition_queue

__all__ = ["REGISTRATIONS", "all_queues", "board_queue", "competition_queue"]
