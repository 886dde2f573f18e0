"""`beit-deploy bench`: settings and results (`report`), one worker process per backend (`worker`), and the
driver that exports, starts the workers and times them interleaved (`run`)."""
