"""The operator page (`watch --ui`): a live view of the station in a browser, served from its own
process: live.py keeps what it shows, app.py serves it, access.py decides who may, server.py runs it."""
