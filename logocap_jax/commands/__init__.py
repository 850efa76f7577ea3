"""The command lines, one thin module each; nothing in the library imports from here."""
