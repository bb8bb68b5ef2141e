"""Markets around the matching engine (instruments, wallets, order entry, settlement). The exchange
issue builds it on `registry` and `matching`; nothing lives here yet."""
