"""Fakes of keytrail's HTTP peers, written from the reference notes, run as real servers on 127.0.0.1."""
