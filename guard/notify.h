/* notify.h: quarantine notifications by e-mail (libcurl SMTP) and webhook. */
#ifndef CANOPY_GUARD_NOTIFY_H
#define CANOPY_GUARD_NOTIFY_H

#include <stddef.h>

#include "canopy/conf_guard.h"
#include "canopy/err.h"

/* Send the e-mail. subject and text borrowed. errbuf gets curl's reason. */
canopy_err notify_email(const canopy_guard_conf *cf, const char *subject, const char *text, char *errbuf,
                        size_t errlen);
/* POST json (borrowed) to the webhook URL. */
canopy_err notify_webhook(const canopy_guard_conf *cf, const char *json, char *errbuf, size_t errlen);

#endif
