"""``python -m headwater``: the ``headwater`` command, through its entry point (see ``_headwater_entry``)."""

if __name__ == "__main__":
    from _headwater_entry import main

    main()
