/* The public header compiles alone as strict C11, and its declarations link. */
#include <shmbroker/shmbroker.h>

int main(void) {
        shmb_channel *none = NULL;
        shmb_client *nobody = NULL;
        shmb_status_list *nothing = NULL;
        shmb_access access = SHMB_RO;

        /* The cleanup helpers are inline here: they must compile as strict C11 and leave NULL as NULL. */
        shmb_closep(&none);
        shmb_disconnectp(&nobody);
        shmb_status_free(nothing);

        return (int) shmb_channel_size(none) + (int) shmb_status_count(nothing) + (access == SHMB_RW) +
               (shmb_strerror(0)[0] == 's' ? 0 : 1);
}
