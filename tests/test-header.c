/* The public header compiles alone as strict C11, and its declarations link. */
#include <shmbroker/shmbroker.h>

int main(void) {
        shmb_channel_info info = { .size = 0 };

        return (int) info.size + (shmb_strerror(0)[0] == 's' ? 0 : 1);
}
