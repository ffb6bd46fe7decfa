"""A rehearsal of a real profile (`repro rehearse --profile fast|full`): every stage of the profile on
corpora made locally in the real corpora's layouts and formats (`corpora`), spoken by the project's
own synthetic voice, and the real model classes at their real sizes with random seeded weights,
saved in the formats their loaders read (`models`); the profile's settings kept, only sizes shrunk
(`profile`); its own folders and data lock file (`runner`). Its results are not results: every report
it writes says so.
"""
