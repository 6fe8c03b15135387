/* The public header compiles alone as strict C11, and its declarations link. */
#include <shmbroker/shmbroker.h>

int main(void) {
        shmb_channel_info info = { .size = 0 };
        shmb_channel *none = NULL;
        shmb_client *nobody = NULL;

        /* The cleanup helpers are inline here: they must compile as strict C11 and leave NULL as NULL. */
        shmb_closep(&none);
        shmb_disconnectp(&nobody);

        return (int) info.size + (shmb_strerror(0)[0] == 's' ? 0 : 1);
}
