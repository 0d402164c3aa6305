/* The work a binding runs without its interpreter lock, as one call each
 * binding passes to its own way of releasing it (Ruby's
 * rb_thread_call_without_gvl, Python's Py_BEGIN_ALLOW_THREADS). See
 * binding.h ("bind_jobs.c"). */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "bind_internal.h"

void *ta_bind_job_run(void *job) {
  ta_bind_job_t *j = job;
  j->ran = 1;
  errno = 0;
  switch (j->kind) {
  case TA_JOB_TRIM:
    j->released = (int64_t)ta_bind_trim();
    break;
  case TA_JOB_RUN:
    j->released = j->trimmer ? ta_bind_trimmer_run(j->trimmer, NULL) : ta_bind_run_trim(NULL);
    break;
  case TA_JOB_RUN_AFTER:
    j->released = ta_bind_run_trim_after(j->wait_ms, &j->stop);
    break;
  case TA_JOB_DUMP:
    j->rc = ta_bind_sampler_dump(j->path, j->dump_kind, j->msg, sizeof j->msg);
    errno = j->rc; /* its return is the errno value */
    break;
  case TA_JOB_TOP_TEXT:
    j->rc = ta_bind_prof_top_str(j->path, j->type, j->n, &j->text, j->msg, sizeof j->msg);
    break;
  case TA_JOB_FLAME:
    j->rc = ta_bind_prof_flame(j->path, j->type, j->collapsed, j->out, j->msg, sizeof j->msg);
    break;
  }
  j->err = errno;
  return NULL;
}

void ta_bind_job_stop(void *job) {
  atomic_store(&((ta_bind_job_t *)job)->stop, 1);
}

int ta_bind_error_kind(int err) {
  return err == EINVAL || err == 0 ? TA_ERR_ARGUMENT : err == ENOMEM ? TA_ERR_MEMORY : TA_ERR_SYSTEM;
}
