"""The output folder: Arrow schemas of the files written, part names, ownership of parts, the resume
fingerprint and lock, status and merge, and the OpenAI batch output files.
"""
