"""python-socketio server: connect/auth, rooms, coalesced leaderboard broadcasts."""
