"""Pipeline stages: each runs one step of the method from plain arguments (gin binds them).

Every stage function is decorated with `stages.base.stage`: its counts and sizes are checked before
any work starts, and it runs holding a lock on its workdir (records.workdir_lock).
"""
