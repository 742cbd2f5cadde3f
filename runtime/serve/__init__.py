"""`bcaudio serve`: one loaded model answering many WebSocket clients, and the kiosk page."""
