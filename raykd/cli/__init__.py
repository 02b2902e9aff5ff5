"""What the command lines share (the commands themselves are ``raykd.tune``, ``raykd.run`` and
``raykd.final``): argument pieces (``options``), the pre-flight ``--check`` (``check``) and the
terminal's metric tables (``report``)."""
