"""Audio in and out: files, microphone and speaker, voice activity detection."""
